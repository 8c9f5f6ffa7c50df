"""One sample a row (stages 1 and 3): micro-batches trimmed to their longest row, as the loader
makes them, beside rows padded to seq_len (the loader before), side by side in one run.

    python benchmarks/bench_padding.py                 # CPU, a small model
    python benchmarks/bench_padding.py --device cuda   # bench_trainer's 1.5 B model, bf16
    python benchmarks/bench_padding.py --tiny          # the same code in seconds

Stage 1 rows hold an image-caption pair (seq_len 512), stage 3 rows a dialogue about an image
(seq_len 2048): captions of 8 to 24 words, dialogues of one to three turns with answers of 10 to
120 words (generated). Both ways read the same shards through the real loader and train the
stage's components on the same micro-batches; the script prints the seconds of a forward and
backward pass and the tokens a second (the samples' own tokens, padding not counted).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_trainer import MODELS, photo, words, write_manifest  # noqa: E402
from corpus.ids import sample_id  # noqa: E402
from corpus.schema import Image, Sample, Source, Turn  # noqa: E402
from corpus.shards import atomic_write, write_tar  # noqa: E402

SMALL = {"visual": {"width": 256, "layers": 4, "head_width": 64}, "adapter": {"queries": 256},
         "llm": {"hidden_size": 512, "layers": 4, "heads": 8, "kv_heads": 2,
                 "intermediate_size": 1408}}


def stage_samples(stage: int, count: int, size: tuple[int, int]) -> list[Sample]:
    rng, pick = np.random.default_rng(stage), random.Random(stage)
    samples = []
    for index in range(count):
        images = [Image(photo(rng, *size), "jpeg", *size)]
        if stage == 1:
            samples.append(Sample(id=sample_id("bench", f"c{index}"), dataset="bench",
                                  task="captioning", source=Source(uri=f"bench://c{index}"),
                                  text=words(pick, pick.randint(8, 24)), images=images))
            continue
        turns = []
        for turn in range(pick.randint(1, 3)):
            question = words(pick, pick.randint(5, 15))
            turns += [Turn("user", f"<image>{question}" if turn == 0 else question),
                      Turn("assistant", words(pick, pick.randint(10, 120)))]
        samples.append(Sample(id=sample_id("bench", f"s{index}"), dataset="bench", task="sft",
                              source=Source(uri=f"bench://s{index}"), text="", turns=turns,
                              images=images))
    return samples


def passes(model, batches, device, bf16: bool, repeats: int) -> float:
    """The median seconds of a forward and backward pass over `batches`, `repeats` times."""
    seconds = []
    for repeat in range(repeats + 1):  # the first round warms up
        started = time.perf_counter()
        for batch in batches:
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(batch.input_ids, batch.position_ids, batch.targets, batch.pixels,
                             batch.layout)
            loss.backward()
            model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if repeat:
            seconds.append((time.perf_counter() - started) / len(batches))
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny model and few samples: keeps the script working")
    parser.add_argument("--micro-batch", type=int, default=4, help="rows per pass")
    parser.add_argument("--batches", type=int, default=4, help="micro-batches per round")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds")
    args = parser.parse_args(argv)
    if args.tiny:
        args.micro_batch, args.batches, args.repeats = 2, 1, 1

    from corpus.tokens import IMAGE_PAD, TextTokenizer
    from trainer.data import build_loader, read_manifest
    from trainer.model import QwenVL, apply_freeze_plan
    from trainer.stages import stage_config

    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    shape = MODELS["tiny"] if args.tiny else (MODELS["1b"] if bf16 else SMALL)
    tokenizer = TextTokenizer.default()
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for stage, seq_len, task in ((1, 512, "captioning"), (3, 2048, "sft")):
            image_size = 56 if args.tiny else (224 if stage == 1 else 448)
            count = args.micro_batch * args.batches
            path = os.path.join(root, f"{task}.tar")
            with atomic_write(path) as f:
                write_tar(stage_samples(stage, count, (64, 48)), f)
            manifest = read_manifest(write_manifest(
                os.path.join(root, f"stage{stage}.yaml"), {task: [(path, count)]}, image_size,
                seq_len, stage=stage, weights={task: 1.0}))
            config = stage_config(stage, overrides={"model": shape})
            torch.manual_seed(0)
            model = QwenVL(config.model, image_size, tokenizer.vocab_size,
                           tokenizer.token_id(IMAGE_PAD)).to(device)
            apply_freeze_plan(model, config.trainable)
            timed = {}
            for way, trim in (("trimmed", True), ("padded", False)):
                loader = build_loader(manifest, tokenizer, model.image_tokens, seq_len,
                                      image_size, 0, args.micro_batch, window=count, trim=trim)
                batches = iter(loader)
                chosen = [next(batches) for _ in range(args.batches)]
                loader.close()
                seconds = passes(model, chosen, device, bf16, args.repeats)
                tokens = sum(batch.tokens for batch in chosen) / len(chosen)
                columns = sum(batch.input_ids.shape[1] for batch in chosen) / len(chosen)
                timed[way] = {"seconds": seconds, "tokens_per_s": tokens / seconds,
                              "columns": columns}
                print(f"stage {stage}, {way:>7}: {columns:6.0f} columns of {seq_len} on average, "
                      f"{seconds:.3f} s a pass, {tokens / seconds:,.0f} tokens/s")
            print(f"stage {stage}: trimmed / padded tokens/s "
                  f"{timed['trimmed']['tokens_per_s'] / timed['padded']['tokens_per_s']:.2f}")
            results[f"stage {stage}"] = timed
            del model
    return results


if __name__ == "__main__":
    main()
