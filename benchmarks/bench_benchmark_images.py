"""Benchmarks of the benchmark-image guard (`filters.benchmark_images`), each measured side by
side in one run.

  robustness  generated photos (gradient, shapes, noise): the distance from edited copies
              (JPEG quality 50-95, 0.5x and 2x, crops of a few % per side) to their excluded
              original, and from distinct photos to the nearest excluded one; how many of each
              the guard matches at the threshold; fingerprint cost per sample and per excluded
              image
  lookups     the guard's HashIndex vs a linear scan over the random fingerprints of
              `--images` excluded images (16 crops each): lookups/s, the same answers from both

  python benchmarks/bench_benchmark_images.py [--only robustness lookups] [--excluded 200]
      [--distinct 2000] [--images 100000] [--queries 2000]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from filters import benchmark_images as guard  # noqa: E402
from filters.hash_index import HashIndex, nearest_by_scan  # noqa: E402

SIZES = [(640, 480), (480, 640), (500, 375), (640, 427)]  # COCO's usual shapes


# ---- generated photos and their edits -----------------------------------------------------------

def natural_image(seed: int) -> Image.Image:
    """A photo-like picture, distinct per seed: a two-colour gradient at some angle, 6-15
    filled shapes and thick lines, a slight blur, sensor-like noise."""
    rng = np.random.default_rng(seed)
    width, height = SIZES[seed % len(SIZES)]
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xs * np.cos(angle) + ys * np.sin(angle)
    ramp = (ramp - ramp.min()) / np.ptp(ramp)
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = Image.fromarray((start + ramp[..., None] * (end - start)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(6, 16)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(-width // 4, width)), int(rng.integers(-height // 4, height))
        w, h = int(rng.integers(width // 16, width // 2)), int(rng.integers(height // 16,
                                                                             height // 2))
        kind = rng.integers(4)
        if kind == 0:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        elif kind == 1:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        elif kind == 2:
            corners = rng.integers(0, (width, height), size=(int(rng.integers(3, 6)), 2))
            draw.polygon([tuple(int(v) for v in corner) for corner in corners], fill=colour)
        else:
            draw.line((x, y, x + w, y + h), fill=colour, width=int(rng.integers(3, 20)))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2))))
    noise = rng.normal(0, rng.uniform(4, 14), (height, width, 3))
    return Image.fromarray((np.asarray(image, np.float32) + noise).clip(0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def cropped(image: Image.Image, left: float, top: float, right: float,
            bottom: float) -> Image.Image:
    """`image` less these fractions of its width or height on each side."""
    w, h = image.size
    return image.crop((round(w * left), round(h * top), w - round(w * right),
                       h - round(h * bottom)))


def scaled(image: Image.Image, factor: float) -> Image.Image:
    return image.resize((round(image.width * factor), round(image.height * factor)),
                        Image.Resampling.BICUBIC)


def edits(image: Image.Image, seed: int) -> dict[str, bytes]:
    """The copies of `image` the guard must still recognise, as JPEG bytes."""
    rng = np.random.default_rng(10_000 + seed)
    side = [0.0] * 4
    side[rng.integers(4)] = 0.05
    corner = [(0.05, 0.05, 0, 0), (0, 0.05, 0.05, 0), (0, 0, 0.05, 0.05),
              (0.05, 0, 0, 0.05)][rng.integers(4)]
    mixed = scaled(cropped(image, *rng.uniform(0, 0.05, 4)), float(rng.choice([0.5, 1, 2])))
    return {
        "JPEG q50": jpeg(image, 50), "JPEG q70": jpeg(image, 70), "JPEG q95": jpeg(image, 95),
        "0.5x": jpeg(scaled(image, 0.5)), "2x": jpeg(scaled(image, 2)),
        "crop 3% each side": jpeg(cropped(image, 0.03, 0.03, 0.03, 0.03)),
        "crop 5% one side": jpeg(cropped(image, *side)),
        "crop 5% two sides": jpeg(cropped(image, *corner)),
        "crop 5% each side": jpeg(cropped(image, 0.05, 0.05, 0.05, 0.05)),
        "crop 0-5%/side, scale, q": jpeg(mixed, int(rng.choice([50, 70, 95]))),
    }


# ---- robustness ------------------------------------------------------------------------------

def robustness(excluded: int, distinct: int, threshold: int) -> dict:
    started = time.perf_counter()
    originals = [jpeg(natural_image(seed)) for seed in range(excluded)]
    made = time.perf_counter()
    fingerprints = np.stack([guard.crop_fingerprints(guard.grey_image(data))
                             for data in originals])
    per_excluded_ms = (time.perf_counter() - made) / excluded * 1000
    index = HashIndex(fingerprints.reshape(-1, len(guard.HASHES)), threshold)
    crops = len(guard.CROPS)

    distances: dict[str, list[int]] = {}
    caught: Counter = Counter()
    samples, sample_seconds = 0, 0.0
    for seed in range(excluded):
        for name, data in edits(natural_image(seed), seed).items():
            clock = time.perf_counter()
            query = guard.fingerprint(guard.grey_image(data))
            sample_seconds += time.perf_counter() - clock
            samples += 1
            own = fingerprints[seed]
            distances.setdefault(name, []).append(int(
                np.bitwise_count(own ^ query).sum(axis=1).min()))
            found = index.nearest(query)
            caught[name] += found is not None and found[0] // crops == seed
    print(f"robustness: {excluded} excluded photos (made in {made - started:.1f} s), threshold "
          f"{threshold} of 256 bits")
    print(f"  {'edit':28s} {'median':>6s} {'p99':>4s} {'max':>4s}  caught")
    for name, values in distances.items():
        print(f"  {name:28s} {np.median(values):6.0f} {np.percentile(values, 99):4.0f} "
              f"{max(values):4d}  {caught[name]}/{excluded}")

    nearest, false_matches = [], 0
    for seed in range(1_000_000, 1_000_000 + distinct):
        query = guard.fingerprint(guard.grey_image(jpeg(natural_image(seed), 80)))
        nearest.append(int(np.bitwise_count(fingerprints.reshape(-1, 4) ^ query)
                           .sum(axis=1).min()))
        false_matches += index.nearest(query) is not None
    print(f"  distinct photos: {distinct} vs the {excluded} excluded ({distinct * excluded:,} "
          f"pairs): matched {false_matches}; nearest distance min {min(nearest)}, "
          f"1st percentile {np.percentile(nearest, 1):.0f}, median {np.median(nearest):.0f}")
    print(f"  fingerprint cost: {sample_seconds / samples * 1000:.2f} ms per sample (decode "
          f"in draft mode + 4 hashes), {per_excluded_ms:.1f} ms per excluded image "
          f"({crops} crops)")
    return {"caught": dict(caught), "false_matches": false_matches,
            "nearest_distinct": min(nearest)}


# ---- lookups ---------------------------------------------------------------------------------

def lookups(images: int, queries: int, threshold: int, seed: int = 0) -> dict:
    """Random fingerprints for `images` excluded images, 16 crops each; half the queries are
    a stored fingerprint with up to threshold + 4 bits flipped, half random."""
    rng = np.random.default_rng(seed)
    words = len(guard.HASHES)
    rows = images * len(guard.CROPS)
    fingerprints = rng.integers(0, 2 ** 64 - 1, size=(rows, words), dtype=np.uint64,
                                endpoint=True)
    started = time.perf_counter()
    index = HashIndex(fingerprints, threshold)
    build = time.perf_counter() - started
    asked = []
    for i in range(queries):
        if i % 2:
            query = rng.integers(0, 2 ** 64 - 1, size=words, dtype=np.uint64, endpoint=True)
        else:
            query = fingerprints[rng.integers(rows)].copy()
            for bit in rng.choice(64 * words, size=int(rng.integers(0, threshold + 5)),
                                  replace=False):
                query[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
        asked.append(query)
    started = time.perf_counter()
    by_index = [index.nearest(query) for query in asked]
    index_rate = queries / (time.perf_counter() - started)
    scanned = asked[:max(20, queries // 20)]  # the scan is slow: a share of the queries
    started = time.perf_counter()
    by_scan = [nearest_by_scan(fingerprints, query, threshold) for query in scanned]
    scan_rate = len(scanned) / (time.perf_counter() - started)
    agree = by_index[:len(scanned)] == by_scan
    memory = (fingerprints.nbytes + index._rows.nbytes + index._starts.nbytes) / 2 ** 20
    print(f"lookups: {images:,} excluded images x {len(guard.CROPS)} crops = {rows:,} random "
          f"fingerprints, threshold {threshold}: {index.bands} pieces of {index.piece_bits} "
          f"bits, {index.radius} flips")
    print(f"  index built in {build:.1f} s, {memory:.0f} MiB with the fingerprints")
    print(f"  HashIndex     {index_rate:10,.0f} lookups/s  ({queries} queries, "
          f"{sum(r is not None for r in by_index)} within the threshold)")
    print(f"  linear scan   {scan_rate:10,.1f} lookups/s  ({len(scanned)} queries)")
    print(f"  index / scan  {index_rate / scan_rate:10,.0f}x; same answers: {agree}")
    return {"index_rate": index_rate, "scan_rate": scan_rate, "agree": agree}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=["robustness", "lookups"],
                        default=["robustness", "lookups"])
    parser.add_argument("--excluded", type=int, default=200, help="robustness: excluded photos")
    parser.add_argument("--distinct", type=int, default=2000,
                        help="robustness: distinct photos tried against them")
    parser.add_argument("--images", type=int, default=100_000, help="lookups: excluded images")
    parser.add_argument("--queries", type=int, default=2000, help="lookups: queries")
    parser.add_argument("--threshold", type=int, default=guard.DEFAULT_THRESHOLD)
    args = parser.parse_args(argv)
    results = {}
    if "robustness" in args.only:
        results["robustness"] = robustness(args.excluded, args.distinct, args.threshold)
    if "lookups" in args.only:
        results["lookups"] = lookups(args.images, args.queries, args.threshold)
    return results


if __name__ == "__main__":
    main()
