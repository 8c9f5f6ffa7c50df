"""Packing plans (Appendix B.1): same-task samples packed into sequences of at most `max_len`
tokens, from their token counts (`corpus.tokens.count_span_tokens`, images included).

Best-fit decreasing: deterministic for the same lengths, and within 11/9 of the optimal number
of sequences. A sample longer than `max_len` gets a sequence of its own; the caller decides
whether to truncate or drop it (`oversized`).
"""
from __future__ import annotations

import bisect


def plan_packs(lengths: list[int], max_len: int) -> list[list[int]]:
    """Indices of `lengths` grouped into sequences whose lengths sum to at most `max_len`."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, pack index), sorted
    for index in order:
        length = lengths[index]
        if length >= max_len:
            packs.append([index])
            continue
        # the fullest pack that still has room: smallest space left that is >= length
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            space, pack = free.pop(slot)
            packs[pack].append(index)
            bisect.insort(free, (space - length, pack))
        else:
            packs.append([index])
            bisect.insort(free, (max_len - length, len(packs) - 1))
    return [sorted(pack) for pack in packs]


def oversized(lengths: list[int], max_len: int) -> list[int]:
    return [i for i, length in enumerate(lengths) if length > max_len]
