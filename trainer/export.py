"""`corpus export`: a checkpoint's weights as one safetensors file, for use outside the trainer.

    corpus export runs/stage3 --output qwen-vl-chat --dtype bf16

writes `model.safetensors` (every weight whole, named as in the model: `visual.`, `adapter.`,
`llm.`), `tokenizer.json` and `model.json` (the model config the run trained) into the folder.
A checkpoint itself holds each rank's part apart (trainer/checkpoint.py); this reads them one
tensor at a time.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

DTYPES = ("fp32", "bf16", "fp16")


def add_arguments(parser):
    parser.add_argument("checkpoint", help="a checkpoint folder, or a training output folder "
                                           "(its latest checkpoint)")
    parser.add_argument("--output", required=True, help="folder to write the files into")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="the weights' type in the file (training keeps fp32 weights)")


def export(checkpoint: str, output: str, dtype: str = "fp32") -> str:
    """Write the export of `checkpoint` into `output`; returns the weights file's path."""
    import torch
    from safetensors.torch import save_file

    from trainer.checkpoint import read_state, resolve_checkpoint, weights_path
    from trainer.weights import tensor_readers

    checkpoint = resolve_checkpoint(checkpoint)
    to = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    # converted as each is read (not after `read_weights`): fp32 and its copy are never whole
    weights = {name: read().to(to).contiguous()
               for name, read in tensor_readers(weights_path(checkpoint)).items()}
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, "model.safetensors")
    state = read_state(checkpoint)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(weights, tmp, metadata={"stage": str(state["stage"]), "step": str(state["step"])})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors creates its files readable by their owner only
    os.replace(tmp, path)
    shutil.copyfile(os.path.join(checkpoint, "tokenizer.json"),
                    os.path.join(output, "tokenizer.json"))
    with open(os.path.join(output, "model.json"), "w", encoding="utf-8") as f:
        json.dump(dict(state["config"]["model"], image_size=state["image_size"]), f, indent=1,
                  sort_keys=True)
    return path


def main(args, extra_argv) -> int:
    from corpus.config import ConfigError

    if extra_argv:
        print(f"corpus export: unknown arguments {extra_argv}", file=sys.stderr)
        return 2
    try:
        path = export(args.checkpoint, args.output, args.dtype)
    except (ConfigError, FileNotFoundError) as error:
        print(f"corpus export: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
