"""`corpus demo`: the whole flow on small bundled samples, generated on the spot.

inputs -> every pipeline's shards -> stage 1/2/3 manifests -> a few trainer steps per stage.
Each pipeline module offers `run_demo(output_dir, beam_argv) -> report`, which makes its own
sample inputs (corpus.samples) and runs itself on them.
"""
from __future__ import annotations

import importlib
import json
import os
import time

# (command, module); the order the demo runs them.
DEMO_PIPELINES = [
    ("pairs", "pipelines.pairs"),
    ("vqa", "pipelines.vqa"),
    ("grounding", "pipelines.grounding"),
    ("pdf", "pipelines.pdf"),
    ("html", "pipelines.html"),
    ("synthdog", "pipelines.synthdog"),
    ("text", "pipelines.text"),
    ("sft", "pipelines.sft"),
]


def add_arguments(parser):
    parser.add_argument("--output", default="demo-output", metavar="DIR",
                        help="where everything goes")
    parser.add_argument("--only", nargs="+", metavar="COMMAND",
                        choices=[name for name, _ in DEMO_PIPELINES],
                        help="run only these pipelines (default: all of them)")
    parser.add_argument("--no-train", action="store_true", help="stop after the manifests")


def main(args, beam_argv):
    os.makedirs(args.output, exist_ok=True)
    reports = {}
    for name, module_name in DEMO_PIPELINES:
        if args.only and name not in args.only:
            continue
        module = importlib.import_module(module_name)
        started = time.time()
        print(f"== corpus {name}")
        report = module.run_demo(os.path.join(args.output, name), beam_argv)
        reports[name] = report
        print(f"   input {report['input']} -> kept {report['kept']}, dropped "
              f"{report['dropped_total']}, errored {report['errored_total']} "
              f"({time.time() - started:.1f} s)")
    with open(os.path.join(args.output, "demo-summary.json"), "w", encoding="utf-8") as f:
        json.dump({name: {k: r[k] for k in ("input", "kept", "dropped_total", "errored_total")}
                   for name, r in reports.items()}, f, indent=2)
    manifests = _build_manifests(args.output, reports)
    if manifests and not args.no_train:
        _train(args.output, manifests, beam_argv)
    print(f"demo output in {args.output}")
    return 0


def _build_manifests(output_dir: str, reports: dict) -> dict[int, str]:
    from manifests.demo import build_demo_manifests

    print("== corpus manifest build (stages 1, 2, 3)")
    manifests = build_demo_manifests(output_dir, sorted(reports))
    for stage, path in sorted(manifests.items()):
        print(f"   stage {stage}: {path}")
    return manifests


def _train(output_dir: str, manifests: dict[int, str], beam_argv) -> None:
    from trainer.demo import train_demo

    print("== corpus train (stages 1 -> 2 -> 3, tiny model, CPU)")
    train_demo(output_dir, manifests)
