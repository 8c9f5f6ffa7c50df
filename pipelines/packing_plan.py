"""Packing plans for the trainer (Appendix B.1): which samples form one training sequence.

Stage 2 packs "the same task data into sequences of length 2048". A sample's length is what
the trainer will feed: its formatted spans (`corpus.formats.format_sample`) tokenized by the one
tokenizer abstraction, each image costing `<img>` + 256 + `</img>`
(`corpus.tokens.count_span_tokens`). Samples are grouped by their own `task` and each group is
packed by `corpus.packing.plan_packs` (best-fit decreasing, deterministic).

A sample longer than `max_len` gets a sequence of its own and is listed in `oversized`; the
trainer decides whether to truncate or skip it.

    plan = plan_shards(["shards/vqa-00000-of-00001.tar"], max_len=2048)
    for sequence in plan.sequences:  # sequence.members: [(shard, index in shard), …]
        ...
    python -m pipelines.packing_plan SHARD... --output plan.json [--max-len 2048]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Iterable

from corpus.formats import DEFAULT_SYSTEM, format_sample
from corpus.packing import plan_packs
from corpus.schema import Sample
from corpus.shards import read_shard
from corpus.tokens import IMAGE_TOKENS, TextTokenizer, count_span_tokens

PLAN_VERSION = 1


@dataclass
class PackedSequence:
    task: str
    tokens: int
    ids: list[str]  # sample ids, in the order to concatenate
    members: list[tuple[str, int]] = field(default_factory=list)  # (shard, index in shard)


@dataclass
class PackingPlan:
    max_len: int
    image_tokens: int
    sequences: list[PackedSequence]
    oversized: list[str]  # ids of samples longer than max_len (each alone in a sequence)
    version: int = PLAN_VERSION

    def fill(self) -> float:
        """Share of the planned token slots that hold sample tokens."""
        slots = sum(max(self.max_len, s.tokens) for s in self.sequences)
        return sum(s.tokens for s in self.sequences) / slots if slots else 0.0


def sample_length(sample: Sample, tokenizer: TextTokenizer, image_tokens: int = IMAGE_TOKENS,
                  system: str | None = DEFAULT_SYSTEM) -> int:
    """Tokens the sample occupies in a sequence, images included."""
    return count_span_tokens(format_sample(sample, system), tokenizer, image_tokens)


def plan_lengths(items: list[tuple[str, str, int, tuple[str, int] | None]], max_len: int,
                 image_tokens: int = IMAGE_TOKENS) -> PackingPlan:
    """Plan from (task, sample id, length, location or None) items, same-task packs only."""
    by_task: dict[str, list[int]] = {}
    for position, (task, _, _, _) in enumerate(items):
        by_task.setdefault(task, []).append(position)
    sequences = []
    for task in sorted(by_task):
        positions = by_task[task]
        lengths = [items[p][2] for p in positions]
        for pack in plan_packs(lengths, max_len):
            chosen = [items[positions[i]] for i in pack]
            sequences.append(PackedSequence(
                task=task, tokens=sum(item[2] for item in chosen),
                ids=[item[1] for item in chosen],
                members=[item[3] for item in chosen if item[3] is not None]))
    oversized = [item[1] for item in items if item[2] > max_len]
    return PackingPlan(max_len, image_tokens, sequences, oversized)


def plan_samples(samples: Iterable[Sample], max_len: int = 2048,
                 tokenizer: TextTokenizer | None = None,
                 image_tokens: int = IMAGE_TOKENS) -> PackingPlan:
    tokenizer = tokenizer or TextTokenizer.default()
    items = [(s.task, s.id, sample_length(s, tokenizer, image_tokens), None) for s in samples]
    return plan_lengths(items, max_len, image_tokens)


def plan_shards(paths: list[str], max_len: int = 2048, tokenizer: TextTokenizer | None = None,
                image_tokens: int = IMAGE_TOKENS) -> PackingPlan:
    """Plan over shards; each sequence also names its samples as (shard, index in shard)."""
    tokenizer = tokenizer or TextTokenizer.default()
    items = []
    for path in paths:
        for index, sample in enumerate(read_shard(path)):
            items.append((sample.task, sample.id, sample_length(sample, tokenizer, image_tokens),
                          (path, index)))
    return plan_lengths(items, max_len, image_tokens)


def write_plan(plan: PackingPlan, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(asdict(plan), f, indent=1)


def load_plan(path: str) -> PackingPlan:
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    if document.get("version") != PLAN_VERSION:
        raise ValueError(f"{path}: packing plan version {document.get('version')!r}, "
                         f"expected {PLAN_VERSION}")
    sequences = [PackedSequence(s["task"], s["tokens"], s["ids"],
                                [tuple(m) for m in s["members"]])
                 for s in document["sequences"]]
    return PackingPlan(document["max_len"], document["image_tokens"], sequences,
                       document["oversized"], document["version"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plan same-task packed sequences over shards")
    parser.add_argument("shards", nargs="+", help=".tar or .parquet shards")
    parser.add_argument("--output", required=True, help="plan JSON to write")
    parser.add_argument("--max-len", type=int, default=2048, help="sequence length (Table 8)")
    parser.add_argument("--tokenizer", help="tokenizer.json or folder (default: built-in)")
    args = parser.parse_args(argv)
    tokenizer = TextTokenizer.load(args.tokenizer) if args.tokenizer else None
    plan = plan_shards(args.shards, args.max_len, tokenizer)
    write_plan(plan, args.output)
    print(f"{len(plan.sequences)} sequences of up to {plan.max_len} tokens, fill "
          f"{plan.fill():.1%}, {len(plan.oversized)} oversized")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
