"""Multi-index hashing: the nearest of many fixed-length bit fingerprints within a Hamming
distance, without comparing the query with every one of them.

A fingerprint is a row of uint64 words, cut into pieces of `piece_bits` bits (a few per word,
none across two words). The first `bands` pieces are indexed, each in a table from piece value
to the rows holding it. Two fingerprints within distance `threshold` differ by at most
`threshold // bands` bits in at least one of those pieces (were every piece off by more, the
pieces alone would add up past the threshold). So the rows worth comparing are those found
under the query's pieces with up to that many bits flipped: `bands` is chosen so that this is at
most 2, and `piece_bits` so that a piece value holds about one row. Only those candidates are
compared in full.
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np

MAX_FLIPS = 2  # bits flipped per piece when probing: 1 + b + b(b-1)/2 probes per piece
MIN_PIECE_BITS, MAX_PIECE_BITS = 8, 21  # a piece table holds 2^piece_bits entries per band


def _flips(bits: int, radius: int) -> np.ndarray:
    """Every mask of `bits` bits with at most `radius` set, XORed into a piece to probe its
    neighbours."""
    masks = [sum(1 << i for i in chosen) for r in range(radius + 1)
             for chosen in combinations(range(bits), r)]
    return np.array(masks, dtype=np.int64)


class HashIndex:
    """The rows of `fingerprints` (R × W uint64) within `threshold` bits of a query."""

    def __init__(self, fingerprints: np.ndarray, threshold: int):
        fingerprints = np.ascontiguousarray(fingerprints, dtype=np.uint64)
        if fingerprints.ndim != 2 or fingerprints.shape[0] >= 2 ** 31:
            raise ValueError(f"fingerprints must be R × W words, R < 2^31; got "
                             f"{fingerprints.shape}")
        self.fingerprints, self.threshold = fingerprints, threshold
        rows, words = fingerprints.shape
        wanted = threshold // (MAX_FLIPS + 1) + 1  # pieces for at most MAX_FLIPS per piece
        # as wide as the pieces can be while there are enough of them, and no wider than
        # needed for about one row per piece value
        widest = max(MIN_PIECE_BITS, min(MAX_PIECE_BITS, 64 // max(1, -(-wanted // words))))
        self.piece_bits = max(MIN_PIECE_BITS, min(widest, math.ceil(math.log2(max(rows, 2)))))
        per_word = 64 // self.piece_bits
        self.bands = min(words * per_word, wanted)
        self.radius = threshold // self.bands
        self._flips = _flips(self.piece_bits, self.radius)
        self._places = [(band // per_word, band % per_word * self.piece_bits)
                        for band in range(self.bands)]  # (word, shift) of each piece
        values = 1 << self.piece_bits
        # per band: the rows in order of piece value, and where each value's rows start
        self._rows = np.empty((self.bands, rows), dtype=np.int32)
        self._starts = np.zeros((self.bands, values + 1), dtype=np.int32)
        for band, pieces in enumerate(self._pieces(fingerprints)):
            self._rows[band] = np.argsort(pieces)  # any order within a value will do
            np.cumsum(np.bincount(pieces, minlength=values), out=self._starts[band, 1:])
        # per probe (band-major): where its band's entries start in the flattened tables
        band_of_probe = np.repeat(np.arange(self.bands, dtype=np.int64), len(self._flips))
        self._probe_base = band_of_probe * (values + 1)
        self._row_base = band_of_probe * rows

    def _pieces(self, fingerprints: np.ndarray):
        mask = np.uint64((1 << self.piece_bits) - 1)
        for word, shift in self._places:
            yield ((fingerprints[:, word] >> np.uint64(shift)) & mask).astype(np.int64)

    def __len__(self) -> int:
        return len(self.fingerprints)

    def candidates(self, query: np.ndarray) -> np.ndarray:
        """The rows sharing a piece with the query up to `radius` flipped bits (with repeats)."""
        words = [int(word) for word in np.asarray(query, dtype=np.uint64)]
        mask = (1 << self.piece_bits) - 1
        pieces = np.array([words[word] >> shift & mask for word, shift in self._places])
        probes = (pieces[:, None] ^ self._flips[None, :]).ravel() + self._probe_base
        starts = self._starts.ravel()
        first = starts[probes]
        counts = starts[probes + 1] - first
        total = int(counts.sum())
        if not total:
            return np.empty(0, dtype=np.int32)
        # where each found row sits in the flattened per-band row lists, range by range
        ends = np.cumsum(counts)
        shift = self._row_base + first - (ends - counts)
        return self._rows.ravel()[np.arange(total) + np.repeat(shift, counts)]

    def nearest(self, query: np.ndarray) -> tuple[int, int] | None:
        """(row, distance) of the closest fingerprint within the threshold (the lowest row on
        a tie), or None."""
        rows = self.candidates(query)
        if not len(rows):
            return None
        distances = hamming(np.take(self.fingerprints, rows, axis=0), query)
        within = distances <= self.threshold
        if not within.any():
            return None
        rows, distances = rows[within], distances[within]
        best = np.lexsort((rows, distances))[0]
        return int(rows[best]), int(distances[best])


def hamming(fingerprints: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Bits that differ between each row of `fingerprints` (R × W) and `query` (W)."""
    counts = np.bitwise_count(fingerprints ^ np.asarray(query, dtype=np.uint64))
    # column by column: numpy's sum over a short last axis costs ten times as much
    total = counts[:, 0].astype(np.int32)
    for column in range(1, counts.shape[1]):
        total += counts[:, column]
    return total


def nearest_by_scan(fingerprints: np.ndarray, query: np.ndarray,
                    threshold: int) -> tuple[int, int] | None:
    """What `HashIndex.nearest` answers, by comparing the query with every row (the baseline
    of the benchmark and the tests)."""
    if not len(fingerprints):
        return None
    distances = hamming(fingerprints, query)
    row = int(np.argmin(distances))
    return (row, int(distances[row])) if distances[row] <= threshold else None
