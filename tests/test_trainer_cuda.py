"""On a CUDA machine only (skipped without a GPU): the varlen kernel computes the attention sdpa
computes, the training forward and backward read nothing back from the GPU, and FSDP under
torchrun (NCCL, bf16, the machine's GPUs up to 4, one included) trains as one process does and
resumes from its checkpoints, and holds stage 1's frozen LLM whole. The CPU tests run the same
code with gloo and fp32 (and bf16)."""
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import yaml

from corpus.tokens import IMAGE_PAD, TextTokenizer
from test_trainer import TINY, shards, stage_manifest  # noqa: F401  (shards is a fixture)
from trainer.attention import varlen_attn
from trainer.data import PackedLayout
from trainer.model import QwenVL
from trainer.stages import stage_config
from trainer.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
# bf16 compute: FSDP casts each unit's parameters to bf16 once (its mixed-precision policy), one
# process casts them per operation (autocast), and the gradients are reduced in another order:
# per-step losses of the two agree within this relative tolerance
LOSS_TOLERANCE = 2e-2


def packed_model_and_rows(rows=2, seq_len=256, samples_per_row=5):
    tokenizer = TextTokenizer.default()
    config = stage_config(2, overrides={"model": {"adapter": {"queries": 16}}})
    torch.manual_seed(0)
    with torch.device(CUDA):
        model = QwenVL(config.model, 56, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD))
    ids = torch.randint(64, tokenizer.vocab_size, (rows, seq_len))
    positions = (torch.arange(seq_len) % (seq_len // samples_per_row + 1)).expand(rows, -1)
    layout = PackedLayout.of(ids, positions.contiguous(), model.image_pad_id)
    return model, ids.to(CUDA), positions.to(CUDA), layout.to(CUDA)


@pytest.mark.skipif(varlen_attn is None, reason="varlen attention needs PyTorch >= 2.9")
def test_varlen_attention_matches_sdpa_on_packed_rows():
    model, ids, positions, layout = packed_model_and_rows()
    hidden = {}
    for attention in ("sdpa", "varlen"):
        model.llm.config._attn_implementation = attention
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            hidden[attention] = model.hidden_states(ids, positions, layout=layout).float()
    torch.testing.assert_close(hidden["varlen"], hidden["sdpa"], atol=3e-2, rtol=3e-2)


@pytest.mark.skipif(varlen_attn is None, reason="varlen attention needs PyTorch >= 2.9")
def test_the_trainer_s_code_never_waits_for_the_gpu():
    model, ids, positions, layout = packed_model_and_rows()
    model.llm.config._attn_implementation = "varlen"
    targets = ids.roll(-1, dims=1)
    layout = PackedLayout.of(ids.cpu(), positions.cpu(), model.image_pad_id,
                             targets.cpu()).to(CUDA)
    torch.cuda.synchronize()
    # PyTorch warns at every synchronising operation, naming the Python line that called it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(ids, positions, targets, None, layout)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    trainer = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "trainer")
    ours = [f"{w.filename}:{w.lineno}" for w in caught
            if "synchroniz" in str(w.message) and w.filename.startswith(trainer)]
    assert not ours
    assert torch.isfinite(loss)


def torchrun_train(argv, processes):
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(processes), "-m", "corpus.cli", "train", *argv], capture_output=True, text=True,
        timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def logged_losses(out):
    return [json.loads(line)["loss"] for line in open(out / "log.jsonl")]


def test_fsdp_on_cuda_trains_as_one_process_and_resumes(tmp_path, shards):  # noqa: F811
    # up to 4 GPUs: the test shards hold 4 text documents, one data lane each at the most
    gpus = min(torch.cuda.device_count(), 4)
    manifest = stage_manifest(tmp_path, shards, 2)
    # one row per pass on each GPU, two passes: the rows of a step are those one process
    # reading the GPUs' data lanes takes in 2 x gpus passes
    settings = dict(TINY, steps=20, warmup_steps=2, micro_batch_size=1, global_batch=2 * gpus,
                    distributed="fsdp", save_every=10)
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump(settings))
    argv = ["--manifest", manifest, "--stage", "2", "--config", str(config)]
    printed = torchrun_train(argv + ["--output", str(tmp_path / "whole")], gpus)
    assert f"{gpus} x cuda:0 bf16 fsdp" in printed
    whole = logged_losses(tmp_path / "whole")

    single = train(manifest, 2, str(tmp_path / "one"), overrides=dict(settings, data_lanes=gpus),
                   device="cuda")
    assert len(whole) == len(single.losses) == 20
    assert whole == pytest.approx(single.losses, rel=LOSS_TOLERANCE)

    # the checkpoint round trip: 10 steps, a checkpoint, then a resume to 20
    interrupted = tmp_path / "interrupted"
    torchrun_train(argv + ["--output", str(interrupted), "--stop-after", "10"], gpus)
    torchrun_train(argv + ["--output", str(interrupted), "--resume"], gpus)
    resumed = logged_losses(interrupted)
    assert len(resumed) == 20
    assert resumed == pytest.approx(whole, rel=1e-3)
    state = json.load(open(interrupted / "checkpoints" / "step-00000020" / "state.json"))
    assert state["world"] == gpus and state["config"]["distributed"] == "fsdp"
    # the uninterrupted run's step-10 checkpoint, written in the background while steps 11 to
    # 20 ran: a resume from it continues as that run did
    behind = tmp_path / "behind" / "checkpoints"
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step-00000010",
                    behind / "step-00000010")
    (behind / "latest").write_text("step-00000010")
    torchrun_train(argv + ["--output", str(tmp_path / "behind"), "--resume"], gpus)
    assert logged_losses(tmp_path / "behind") == pytest.approx(whole[10:], rel=1e-3)
    # the checkpoint the ranks wrote in parts starts a single process (--init)
    follow = train(manifest, 2, str(tmp_path / "follow"), init=str(interrupted),
                   overrides=dict(TINY, steps=1), device="cuda")
    assert all(loss == loss for loss in follow.losses)


def test_fsdp_on_cuda_holds_the_frozen_llm_of_stage_1_whole_in_bf16(tmp_path, shards):  # noqa: F811
    gpus = min(torch.cuda.device_count(), 4)
    manifest = stage_manifest(tmp_path, shards, 1)
    settings = dict(TINY, steps=6, warmup_steps=2, micro_batch_size=1, global_batch=2 * gpus,
                    distributed="fsdp")
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump(settings))
    printed = torchrun_train(["--manifest", manifest, "--stage", "1", "--config", str(config),
                              "--output", str(tmp_path / "whole")], gpus)
    assert "bf16 fsdp, frozen llm whole on each rank" in printed
    single = train(manifest, 1, str(tmp_path / "one"), overrides=dict(settings, data_lanes=gpus),
                   device="cuda")
    assert logged_losses(tmp_path / "whole") == pytest.approx(single.losses, rel=LOSS_TOLERANCE)
