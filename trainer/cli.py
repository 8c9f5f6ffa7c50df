"""`corpus train`: one stage of Table 8 on a stage manifest.

    corpus train --manifest stage2.yaml --stage 2 --init runs/stage1 --output runs/stage2
"""
from __future__ import annotations

import os
import sys

from corpus.config import ConfigError


def add_arguments(parser):
    parser.add_argument("--manifest", required=True, help="stage manifest (corpus manifest build)")
    parser.add_argument("--stage", type=int, required=True, choices=(1, 2, 3),
                        help="the Table 8 column; must match the manifest's stage")
    parser.add_argument("--config", help="YAML overriding the stage's Table 8 plan "
                                         "(trainer/configs/ has examples) (default: none, the "
                                         "plan as Table 8 gives it)")
    parser.add_argument("--init", help="checkpoint (or output folder) of the previous stage "
                                       "(default: none, the pretrained weights the model config "
                                       "names, else random ones)")
    parser.add_argument("--output", required=True, help="checkpoints and log.jsonl go here")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --output, exactly")
    parser.add_argument("--steps", type=int,
                        help="override the stage's total steps (default: the stage's)")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="stop this run after N steps (with a checkpoint); resume later "
                             "(default: none, run to the end)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")


def main(args, extra_argv) -> int:
    from trainer.train import train

    if extra_argv:
        print(f"corpus train: unknown arguments {extra_argv}", file=sys.stderr)
        return 2
    if args.resume and args.init:
        print("corpus train: --resume continues --output; --init starts a new stage",
              file=sys.stderr)
        return 2
    overrides = {"steps": args.steps} if args.steps else None
    try:
        result = train(args.manifest, args.stage, args.output, config_path=args.config,
                       init=args.init, resume=args.resume, overrides=overrides,
                       device=args.device, stop_after=args.stop_after)
    except (ConfigError, FileNotFoundError) as error:
        print(f"corpus train: {error}", file=sys.stderr)
        return 2
    # every rank wrote its part of the checkpoint; rank 0 alone says where it is
    if result.checkpoint and os.environ.get("RANK", "0") == "0":
        print(f"step {result.steps}: checkpoint {result.checkpoint}")
    return 0
