"""How `corpus pairs` and `corpus pdf` scale locally: N vs 10 N inputs, side by side (S8).

  pairs   10k vs 100k image-text pairs (img2dataset tars, CLIP off), `--small`: 1k vs 10k
  pdf     100 vs 1000 PDF pages (10-page documents: text, photo, chart, Chinese), `--small`:
          20 vs 200

Each size runs in its own child process (a fresh interpreter, so nothing is shared or warm),
while this process samples the resident memory of the child and all its descendants (runner
workers, render processes) every 50 ms. Printed per size: run seconds (inside the child, from
the pipeline call to the report; imports excluded), peak resident memory of the process tree
(the sum over its processes at the worst moment) and of its largest process; then the time
ratio against the input ratio (the goal: at most 1.1 times the input ratio) and the memory
ratio (the goal: at most 1.2). Both sizes write shards of the same size (the smaller input's
count, at most 1,000 samples): a shard part is held in memory while it is written, so with a
shard size above the smaller input the memory ratio would measure the part filling up, not
the input growing.

  .venv/bin/python benchmarks/bench_scaling.py --small               # a couple of minutes
  .venv/bin/python benchmarks/bench_scaling.py --only pairs          # the issue's sizes
  .venv/bin/python benchmarks/bench_scaling.py --small --only pdf --workers 1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402

PAGES_PER_PDF = 10
SIZES = {"pairs": (10_000, 100_000), "pdf": (100, 1000)}
SMALL_SIZES = {"pairs": (1_000, 10_000), "pdf": (20, 200)}


def beam_argv(workers: int) -> list[str]:
    return [f"--workers={workers}"]


def write_inputs(kind: str, directory: str, size: int) -> None:
    if kind == "pairs":
        from bench_pairs import write_inputs as write_pairs
        write_pairs(directory, size)
        return
    from bench_pdf import make_pdf
    os.makedirs(directory, exist_ok=True)
    data = make_pdf(PAGES_PER_PDF)  # one document copied: every page costs the same at any size
    for number in range(size // PAGES_PER_PDF):
        with open(os.path.join(directory, f"doc-{number:05d}.pdf"), "wb") as f:
            f.write(data)


def child(kind: str, input_dir: str, output: str, workers: int, per_shard: int) -> None:
    """Runs in the child process: one pipeline run, its seconds and counts as JSON."""
    argv = beam_argv(workers)
    if kind == "pairs":
        from bench_pairs import bench_config
        from pipelines.pairs import run
        config = bench_config()
        started = time.perf_counter()
        report = run([input_dir], output, "bench", config, argv, samples_per_shard=per_shard)
    else:
        from pipelines.pdf import PdfConfig, run
        started = time.perf_counter()
        report = run([input_dir], output, "bench", PdfConfig(), argv, samples_per_shard=per_shard)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "input": report["input"], "kept": report["kept"]}))


def tree_rss(process: psutil.Process) -> tuple[int, int]:
    """(sum, largest) resident bytes of a process and its descendants."""
    total = largest = 0
    try:
        processes = [process] + process.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    for p in processes:
        try:
            rss = p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def measure(kind: str, input_dir: str, output: str, workers: int, per_shard: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", kind, input_dir, output,
               "--workers", str(workers), "--samples-per-shard", str(per_shard)]
    started = time.perf_counter()
    # Output to files, not pipes: a pipe nobody reads until the end can fill and stall the run.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        with subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT) as proc:
            watched = psutil.Process(proc.pid)
            peak_tree = peak_one = 0
            while proc.poll() is None:
                total, largest = tree_rss(watched)
                peak_tree, peak_one = max(peak_tree, total), max(peak_one, largest)
                time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} child failed:\n{err.read()[-3000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    result.update(wall=time.perf_counter() - started, peak_tree_mb=peak_tree / 2**20,
                  peak_one_mb=peak_one / 2**20)
    return result


def bench(kind: str, sizes: tuple[int, int], work: str, workers: int) -> None:
    results, per_shard = {}, min(1000, sizes[0])
    for size in sizes:
        input_dir = os.path.join(work, f"{kind}-in-{size}")
        write_inputs(kind, input_dir, size)
        results[size] = measure(kind, input_dir, os.path.join(work, f"{kind}-out-{size}"),
                                workers, per_shard)
        shutil.rmtree(input_dir)
        r = results[size]
        print(f"{kind:5} {size:>7} inputs: {r['input']} units, {r['kept']} kept; run "
              f"{r['seconds']:.1f} s (child wall {r['wall']:.1f} s), {per_shard} per shard; "
              f"peak RSS tree "
              f"{r['peak_tree_mb']:.0f} MB, largest process {r['peak_one_mb']:.0f} MB",
              flush=True)
    small, large = (results[s] for s in sizes)
    input_ratio = large["input"] / small["input"]
    time_ratio = large["seconds"] / small["seconds"]
    print(f"{kind:5} {sizes[0]} vs {sizes[1]}: time {time_ratio:.2f}x for {input_ratio:.0f}x "
          f"the input ({time_ratio / input_ratio:.2f} of linear; goal <= 1.1); peak memory "
          f"{large['peak_tree_mb'] / small['peak_tree_mb']:.2f}x (tree), "
          f"{large['peak_one_mb'] / small['peak_one_mb']:.2f}x (largest process; goal <= 1.2)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="1k vs 10k pairs, 20 vs 200 pages")
    parser.add_argument("--only", nargs="+", choices=["pairs", "pdf"], default=["pairs", "pdf"])
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes (default 2, the issue's setting)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--samples-per-shard", type=int, default=1000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.workers, args.samples_per_shard)
        return
    sizes = SMALL_SIZES if args.small else SIZES
    load = os.getloadavg()
    print(f"{args.workers} worker(s); {os.cpu_count()} cores, load average {load[0]:.1f} "
          f"{load[1]:.1f} {load[2]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as work:
        for kind in args.only:
            bench(kind, sizes[kind], work, args.workers)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
