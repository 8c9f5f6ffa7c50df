#!/usr/bin/env bash
# The trainer's figures and checks that need a CUDA GPU, in one run (docs/benchmarks.md,
# "Pending: the trainer on a GPU"):
#
#   bash benchmarks/trainer_on_gpu.sh [OUT] [BUDGET_SECONDS]    # defaults: gpu-results, 540
#   TINY=1 bash benchmarks/trainer_on_gpu.sh                    # the same steps, tiny, any machine
#
# PYTHON names the interpreter (default: python3).
# Most decisive first: the speed goals (bench_trainer.py), the CUDA checks (varlen, no sync,
# FSDP with NCCL and bf16, the checkpoint copy stream), padding; with two GPUs or more, the
# multi-GPU benchmarks. Each step runs under a time limit and the whole under the budget: a step
# that would not fit is named as skipped. Each step's output goes to OUT/<step>.log as well,
# bench_trainer's results to OUT/bench_trainer.json and its profiler traces to OUT/traces/.
set -uo pipefail

out=${1:-gpu-results}
budget=${2:-540}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # a checkout runs without being installed
export PYTHONUNBUFFERED=1
tiny=${TINY:+--tiny}
python=${PYTHON:-python3}

step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local left=$((budget - SECONDS))
    if ((left < 20)); then
        echo "== $name: skipped, ${left} s of the budget left"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (at most ${limit} s): $*"
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - began)) s"
}

step environment 60 "$python" -c '
import importlib.metadata as metadata, os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cores", os.cpu_count())
for index in range(torch.cuda.device_count()):
    print(f"cuda:{index}", torch.cuda.get_device_name(index))
print(", ".join(f"{name} {metadata.version(name)}"
                for name in ("transformers", "open_clip_torch", "numpy", "pyarrow")))'
gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)

variants=(varlen varlen+compile)
[[ $gpus == 0 ]] && variants=(sdpa)
step bench_trainer 330 "$python" benchmarks/bench_trainer.py $tiny --variants "${variants[@]}" \
    --profile "$out/traces" --json "$out/bench_trainer.json"
step cuda_checks 240 "$python" -m pytest -q -p no:cacheprovider tests/test_trainer_cuda.py \
    tests/test_trainer_checkpoint.py -k cuda
if [[ -n $tiny ]]; then
    step bench_padding 150 "$python" benchmarks/bench_padding.py --tiny
else
    step bench_padding 150 "$python" benchmarks/bench_padding.py --device cuda
fi
if ((gpus >= 2)); then
    step bench_frozen 150 "$python" benchmarks/bench_frozen.py --ranks "$gpus" --device cuda \
        --llm-layers 24 --image-size 224
    step bench_checkpoint 150 "$python" benchmarks/bench_checkpoint.py --ranks "$gpus" \
        --device cuda --llm-layers 24 --tokens 2048
fi
if ((gpus >= 4)); then
    step bench_hybrid 150 "$python" benchmarks/bench_hybrid.py --ranks "$gpus" --node-size 2 \
        --device cuda --hidden 2048 --llm-layers 24
fi

echo "== goals"
grep -h "^goal:" "$out/bench_trainer.log" 2>/dev/null || echo "no goal lines: see bench_trainer.log"
echo "== done in ${SECONDS} s; logs in $out"
