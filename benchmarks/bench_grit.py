"""GRIT pruning: boxes kept and time per record, weighted interval scheduling (the optimum for
boxes) against greedy by earliest end (the optimum for spans), side by side on the same
records of two kinds: GRIT-like (noun chunks with 1-3 boxes, half of them grown into an
expression that swallows the next chunk, sharing the head's boxes) and random overlapping spans
(1-4 boxes each), where greedy's blind spot shows.

    .venv/bin/python benchmarks/bench_grit.py [--records 20000]
"""
from __future__ import annotations

import argparse
import random
import time

from filters.grit import best_span_set


def greedy_by_end(spans):
    chosen, last_end = [], -1
    for i in sorted(range(len(spans)), key=lambda i: (spans[i][1], spans[i][0])):
        if spans[i][0] >= last_end:
            chosen.append(i)
            last_end = spans[i][1]
    return chosen


def grit_like_record(rng: random.Random):
    """Noun chunks over a caption of ~60 characters; some grow into expressions that swallow
    the next chunk ("a dog on a couch"), as GRIT's `ref_exps` do."""
    spans, cursor = [], 0
    chunks = []
    for _ in range(rng.randint(1, 5)):
        start = cursor + rng.randint(1, 8)
        end = start + rng.randint(3, 12)
        chunks.append((start, end))
        cursor = end
    for i, (start, end) in enumerate(chunks):
        boxes = rng.choice([1, 1, 1, 2, 3])
        spans.append((start, end, boxes))
        if i + 1 < len(chunks) and rng.random() < 0.5:
            spans.append((start, chunks[i + 1][1], boxes))
    return spans


def random_record(rng: random.Random):
    spans = set()
    for _ in range(rng.randint(1, 8)):
        start = rng.randrange(60)
        spans.add((start, start + rng.randint(2, 25)))
    return [(s, e, rng.randint(1, 4)) for s, e in sorted(spans)]


def compare(label: str, records) -> None:
    results = {}
    for name, fn in (("optimum", best_span_set), ("greedy", greedy_by_end)):
        started = time.perf_counter()
        chosen = [fn(spans) for spans in records]
        seconds = time.perf_counter() - started
        boxes = sum(spans[i][2] for spans, picks in zip(records, chosen) for i in picks)
        results[name] = (boxes, seconds, chosen)
    (dp_boxes, dp_s, dp), (gr_boxes, gr_s, gr) = results["optimum"], results["greedy"]
    better = sum(sum(s[i][2] for i in a) > sum(s[i][2] for i in b)
                 for s, a, b in zip(records, dp, gr))
    total = sum(sum(s[2] for s in spans) for spans in records)
    print(f"{label:10s} boxes in {total:7d} | kept: optimum {dp_boxes:7d}, greedy {gr_boxes:7d}, "
          f"ratio {dp_boxes / gr_boxes:.3f} | records where the optimum keeps more "
          f"{better / len(records):5.1%} | µs/record: optimum {dp_s / len(records) * 1e6:.1f}, "
          f"greedy {gr_s / len(records) * 1e6:.1f}, ratio {dp_s / gr_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args()
    rng = random.Random(0)
    compare("GRIT-like", [grit_like_record(rng) for _ in range(args.records)])
    compare("random", [random_record(rng) for _ in range(args.records)])


if __name__ == "__main__":
    main()
