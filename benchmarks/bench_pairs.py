"""Benchmarks of `corpus pairs`, each a ratio of rates measured side by side in one run.

  rules    (S9) the pipeline with one worker vs a bare Python loop applying the same reader,
           rules and longest-caption choice to the same input, CPU seconds per pair (>= 0.85x)
  workers  (S1, S2, S3, S4) end to end with each worker count of `--workers` vs one worker;
           the fixed cost of a run (50 pairs) at each count; the CPU of the coordinating process
           over the CPU of its workers and the bytes per pair that reach it (2 workers)
  clip     (S6') CLIP on (tiny model, CPU): `--workers` processes vs one process
  dask     (S5) the same run on Beam's DaskRunner over a local cluster of each worker count
  gpu      (S6) CLIP on a GPU: pipeline pairs/s vs the model-only rate on the same decoded
           batches (needs CUDA; `--clip-model ViT-L-14 --clip-batch 256`)

Scaling from N to 10 N pairs (S8) is `benchmarks/bench_scaling.py`. Every pipeline run here
happens in a fresh child process, so its CPU (its own and its workers',
which are its children) and its peak memory are its own. Inputs are img2dataset-style tars
made on the spot (`--pairs-per-tar` pairs each, every pair its own image).

  python benchmarks/bench_pairs.py [--pairs N] [--workers 1 2] [--only rules workers ...]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from corpus.samples.pairs import Pair, make_photo, write_img2dataset_tar  # noqa: E402

CAPTIONS = [
    "a red kite flying over a green field", "一只小狗在草地上奔跑", "Sunset over the harbour",
    "<b>Fresh</b> strawberries &amp; cream", "best party ever 🎉", "dog", "Café au lait",
    "Lighthouse at dusk!!!! www.example.com", "DSC_2481.JPG", "two zebras grazing in tall grass",
    "猫咪在窗台上晒太阳，看起来很舒服", "<PERSON> walks the dog along the beach",
]
ONE_PROCESS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def write_inputs(directory: str, n: int, per_tar: int = 625,
                 size: tuple[int, int] = (256, 224)) -> list[str]:
    """n pairs: 64 base photos made distinct by trailing bytes (every pair its own image hash),
    captions cycling through clean and rule-triggering ones; a few wide or small images."""
    os.makedirs(directory, exist_ok=True)
    photos = [make_photo(size[0] + 8 * (i % 4), size[1], seed=i) for i in range(60)]
    photos += [make_photo(900, 224, seed=61), make_photo(120, 100, seed=62)] * 2
    paths = []
    for start in range(0, n, per_tar):
        pairs = [Pair(f"{i:09d}", photos[i % len(photos)] + i.to_bytes(8, "little"),
                      f"{CAPTIONS[i % len(CAPTIONS)]} {i}", "")
                 for i in range(start, min(n, start + per_tar))]
        path = os.path.join(directory, f"{start // per_tar:05d}.tar")
        write_img2dataset_tar(path, pairs)
        paths.append(path)
    return paths


def bench_config(clip: dict | None = None, longest: bool = True):
    """The default rules, decoding off (the clip benchmark measures decoding), or with a model:
    every rule that could drop a pair before CLIP off, so every pair reaches it."""
    import dataclasses

    from pipelines.clip import ClipConfig
    from pipelines.pairs import PairsConfig

    config = PairsConfig(longest_caption_per_image=longest)
    if clip is None:
        config.image.verify_decode = False
        return config
    config = dataclasses.replace(config, clip=ClipConfig(**clip), text=dataclasses.replace(
        config.text, allowed_scripts=False, drop_emoji=False, min_chars=0, tag_language=False,
        patterns=[], recheck_length_after_cleaning=False, academic_tags=[]))
    config.image.max_aspect_ratio = config.image.min_side = None
    return config


def bare_loop(paths: list[str], output: str) -> int:
    """The same reader, rules and longest-caption choice, in one Python loop, one tar out."""
    from corpus.shards import write_tar
    from filters.base import Reject, apply_rules
    from filters.image_rules import image_rules
    from pipelines.pairs import InputFile, PairReader, text_rules

    config = bench_config()
    reader = PairReader("bench", config)
    rules = image_rules(config.image) + text_rules(config.text)
    best: dict[str, object] = {}
    for path in paths:
        for item in reader(InputFile(path, os.path.basename(path))):
            if isinstance(item, Reject):
                continue
            result = apply_rules(item, rules)
            if isinstance(result, Reject):
                continue
            current = best.get(result.source.sha256)
            if current is None or (-len(result.text), result.id) < (-len(current.text), current.id):
                best[result.source.sha256] = result
    with open(output, "wb") as f:
        return write_tar(sorted(best.values(), key=lambda s: s.id), f)


# ---- a pipeline run in a child process ----------------------------------------------------------

def child_run(inputs: str, output: str, argv: list[str], config: dict) -> None:
    """Imports first (not timed), then one run; prints what the parent measures, as JSON."""
    started_import = time.perf_counter()
    from pipelines import workers
    from pipelines.pairs import run
    if config.get("clip"):
        import open_clip  # noqa: F401 (torch and transformers: seconds, once per process)
    import_seconds = time.perf_counter() - started_import
    paths = sorted(os.path.join(inputs, name) for name in os.listdir(inputs))
    wall = time.perf_counter()
    report = run(paths, output, "bench", bench_config(**config), argv)
    wall = time.perf_counter() - wall
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "seconds": wall, "import_seconds": import_seconds,
        "self_cpu": own.ru_utime + own.ru_stime,
        "children_cpu": children.ru_utime + children.ru_stime,
        "self_peak_mb": own.ru_maxrss / 1024, "children_peak_mb": children.ru_maxrss / 1024,
        "traffic_bytes": workers.traffic["bytes"], "input": report["input"],
        "kept": report["kept"], "clip_scored": report["stats"].get("clip_scored", 0)}))


def run_child(inputs: str, output: str, argv: list[str], config: dict | None = None) -> dict:
    child = subprocess.run(
        [sys.executable, __file__, "--child", inputs, output, json.dumps(argv),
         json.dumps(config or {})], capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"benchmark run failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def workers_argv(count: int) -> list[str]:
    return ONE_PROCESS if count == 1 else [f"--workers={count}"]


# ---- the benchmarks ---------------------------------------------------------------------------

def bench_rules(work: str, n: int) -> None:
    """S9: CPU seconds per pair, one worker, vs the bare loop in this process (its language
    model loaded before timing). The pipeline figure is its child's CPU, a 50-pair run's
    subtracted (imports, runner start, report and plot)."""
    paths = write_inputs(os.path.join(work, "rules-in"), n)
    few_dir = os.path.join(work, "rules-few")
    write_inputs(few_dir, 50)
    bare_loop(paths[:1], os.path.join(work, "warm-up.tar"))
    cpu = time.process_time()
    kept_loop = bare_loop(paths, os.path.join(work, "loop.tar"))
    loop_cpu = time.process_time() - cpu
    for longest in (True, False):
        config = {"longest": longest}
        few = run_child(few_dir, os.path.join(work, f"rules-few-{longest}"), ONE_PROCESS, config)
        full = run_child(os.path.join(work, "rules-in"), os.path.join(work, f"rules-{longest}"),
                         ONE_PROCESS, config)
        if longest:
            assert full["kept"] == kept_loop, (full["kept"], kept_loop)
        cpu_full = full["self_cpu"] + full["children_cpu"]
        cpu_few = few["self_cpu"] + few["children_cpu"]
        print(f"rules   (S9) {n} pairs, longest caption {'on ' if longest else 'off'}: bare loop "
              f"{n / loop_cpu:6.0f} pairs/cpu-s, pipeline 1 worker "
              f"{(n - 50) / (cpu_full - cpu_few):6.0f} pairs/cpu-s (50-pair run subtracted) -> "
              f"{loop_cpu / (cpu_full - cpu_few) * (n - 50) / n:.2f}x; "
              f"end to end {n / cpu_full:.0f} pairs/cpu-s -> {loop_cpu / cpu_full:.2f}x")


def bench_workers(work: str, n: int, counts: list[int], per_tar: int) -> None:
    """S1/S2 end to end and marginal, S3 the 50-pair run, S4 the coordinator's share."""
    inputs = os.path.join(work, "workers-in")
    write_inputs(inputs, n, per_tar=per_tar)
    few_dir = os.path.join(work, "workers-few")
    write_inputs(few_dir, 50)
    results = {}
    for count in counts:
        few = run_child(few_dir, os.path.join(work, f"few-{count}"), workers_argv(count))
        full = run_child(inputs, os.path.join(work, f"out-{count}"), workers_argv(count))
        results[count] = (few, full)
    base_few, base = results[counts[0]]
    for count, (few, full) in results.items():
        rate, marginal = n / full["seconds"], (n - 50) / (full["seconds"] - few["seconds"])
        base_marginal = (n - 50) / (base["seconds"] - base_few["seconds"])
        print(f"workers (S1/S2/S3) {n} pairs in {-(-n // per_tar)} tars, {count:2d} worker(s): "
              f"{full['seconds']:6.1f} s, {rate:6.0f} pairs/s -> "
              f"{rate / (n / base['seconds']):5.2f}x of {counts[0]}; marginal {marginal:6.0f} "
              f"pairs/s -> {marginal / base_marginal:5.2f}x; 50-pair run {few['seconds']:.2f} s "
              f"(importing the pipeline {few['import_seconds']:.2f} s before it)")
        if count > 1:
            share = full["self_cpu"] / max(full["children_cpu"], 1e-9)
            marginal_share = (full["self_cpu"] - few["self_cpu"]) / max(
                full["children_cpu"] - few["children_cpu"], 1e-9)
            print(f"        (S4) coordinator CPU {full['self_cpu']:.2f} s / workers "
                  f"{full['children_cpu']:.2f} s = {100 * share:.1f} % (its fixed cost of "
                  f"{few['self_cpu']:.2f} s in a 50-pair run subtracted: "
                  f"{100 * marginal_share:.1f} %); {full['traffic_bytes'] / n:.1f} bytes per "
                  f"pair reached the coordinator")


def bench_clip(work: str, n: int, counts: list[int], per_tar: int) -> None:
    """S6': CLIP on with the tiny random model on the CPU; every pair reaches it. End to end,
    and marginal: a 64-pair run at the same worker count (loading the model, the run's fixed
    cost) subtracted."""
    from pipelines.clip import TINY_MODEL_NAME, write_tiny_checkpoint

    model_config, checkpoint = write_tiny_checkpoint(os.path.join(work, "clip"))
    clip = {"model": TINY_MODEL_NAME, "checkpoint": checkpoint, "model_config": model_config,
            "threshold": -1.0, "batch_size": 64}
    inputs, few_dir = os.path.join(work, "clip-in"), os.path.join(work, "clip-few")
    write_inputs(inputs, n, per_tar=per_tar, size=(640, 480))
    write_inputs(few_dir, 64, size=(640, 480))
    rates = {}
    for count in counts:
        few = run_child(few_dir, os.path.join(work, f"clip-few-{count}"), workers_argv(count),
                        {"clip": clip})
        full = run_child(inputs, os.path.join(work, f"clip-out-{count}"), workers_argv(count),
                         {"clip": clip})
        rates[count] = (full["clip_scored"] / full["seconds"],
                        (full["clip_scored"] - few["clip_scored"])
                        / (full["seconds"] - few["seconds"]))
        end, marginal = rates[count]
        print(f"clip    (S6') {n} pairs of 640x480, tiny CLIP on the CPU, {count:2d} worker(s): "
              f"{end:6.0f} pairs/s -> {end / rates[counts[0]][0]:.2f}x; marginal "
              f"{marginal:6.0f} pairs/s -> {marginal / rates[counts[0]][1]:.2f}x (a 64-pair "
              f"run {few['seconds']:.1f} s; importing open_clip and torch before it "
              f"{full['import_seconds']:.1f} s)")


def bench_dask(work: str, n: int, counts: list[int], per_tar: int) -> None:
    """S5: Beam's DaskRunner over a local cluster of `count` single-threaded worker processes,
    4 partitions per worker."""
    from distributed import LocalCluster

    inputs = os.path.join(work, "dask-in")
    write_inputs(inputs, n, per_tar=per_tar)
    rates = {}
    for count in counts:
        with LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None, silence_logs=40) as cluster:
            argv = ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                    f"--dask_client_address={cluster.scheduler_address}",
                    f"--dask_npartitions={4 * count}"]
            result = run_child(inputs, os.path.join(work, f"dask-out-{count}"), argv)
        rates[count] = n / result["seconds"]
        print(f"dask    (S5) {n} pairs, {count:2d} Dask worker(s): {result['seconds']:.1f} s, "
              f"{rates[count]:6.0f} pairs/s -> {rates[count] / rates[counts[0]]:.2f}x")


def model_rate(work: str, model: str, batch: int, device: str, precision: str,
               batches: int = 20) -> float:
    """Images/s of the model alone on decoded batches already in memory."""
    import numpy as np

    from filters.image_rules import decode_for_model
    from pipelines.clip import ClipConfig, load_clip, model_input_size

    model_config, checkpoint = clip_files(work, model)
    config = ClipConfig(model=model, checkpoint=checkpoint, model_config=model_config,
                        device=device, precision=precision)
    loaded = load_clip(config)
    size = model_input_size(config)
    pixels = np.stack([decode_for_model(make_photo(320, 240, seed=i % 16), size)
                       for i in range(batch)])
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    loaded.score(pixels, texts)  # warm-up
    started = time.perf_counter()
    for _ in range(batches):
        loaded.score(pixels, texts)
    return batch * batches / (time.perf_counter() - started)


def clip_files(work: str, model: str) -> tuple[str | None, str]:
    """(architecture JSON or None, checkpoint): the tiny model, or a random-init checkpoint of
    a built-in architecture (no download)."""
    import open_clip
    import torch

    from pipelines.clip import TINY_MODEL_NAME, write_tiny_checkpoint

    if model == TINY_MODEL_NAME:
        return write_tiny_checkpoint(os.path.join(work, "clip"))
    path = os.path.join(work, f"{model}-random.pt")
    if not os.path.exists(path):
        torch.save({"state_dict": open_clip.create_model(model).state_dict()}, path)
    return None, path


def bench_gpu(work: str, n: int, model: str, batch: int, workers: int, device: str) -> None:
    """S6: the pipeline with CLIP on the GPU (one model for every worker process) vs the
    model-only rate. The pipeline time includes starting the model's process."""
    precision = "bf16" if device.startswith("cuda") else "fp32"
    alone = model_rate(work, model, batch, device, precision)
    model_config, checkpoint = clip_files(work, model)
    clip = {"model": model, "checkpoint": checkpoint, "model_config": model_config,
            "device": device, "precision": precision, "batch_size": batch, "threshold": -1.0}
    inputs = os.path.join(work, "gpu-in")
    write_inputs(inputs, n, per_tar=batch * 4, size=(640, 480))  # LAION-like sizes
    result = run_child(inputs, os.path.join(work, "gpu-out"), workers_argv(workers),
                       {"clip": clip, "longest": False})
    rate = result["clip_scored"] / result["seconds"]
    print(f"gpu     (S6) {model} {precision} batch {batch}, {workers} workers: "
          f"{result['clip_scored']} of {n} scored in {result['seconds']:.1f} s -> "
          f"{rate:.0f} pairs/s vs model only {alone:.0f} img/s -> {rate / alone:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=["rules", "workers", "clip"],
                        choices=["rules", "workers", "clip", "dask", "gpu"])
    parser.add_argument("--pairs", type=int, default=2000,
                        help="pairs for rules, workers, clip and dask (default 2,000; the "
                             "goals: 20,000 on 2 cores, 200,000 on 16)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts, the first the base of the ratios")
    parser.add_argument("--pairs-per-tar", type=int, default=625)
    parser.add_argument("--clip-model", default="corpus-tiny-clip",
                        help="open_clip architecture for the gpu benchmark (random weights)")
    parser.add_argument("--clip-batch", type=int, default=256)
    parser.add_argument("--gpu-pairs", type=int, default=20_000)
    parser.add_argument("--gpu-device", default="cuda")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        inputs, output, argv, config = args.child
        child_run(inputs, output, json.loads(argv), json.loads(config))
        return
    load = os.getloadavg()[0]
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores, load {load:.2f}")
    with tempfile.TemporaryDirectory() as work:
        if "rules" in args.only:
            bench_rules(work, args.pairs)
        if "workers" in args.only:
            bench_workers(work, args.pairs, args.workers, args.pairs_per_tar)
        if "clip" in args.only:
            bench_clip(work, args.pairs, args.workers, args.pairs_per_tar)
        if "dask" in args.only:
            bench_dask(work, args.pairs, args.workers, args.pairs_per_tar)
        if "gpu" in args.only:
            bench_gpu(work, args.gpu_pairs, args.clip_model, args.clip_batch,
                      os.cpu_count() or 1, args.gpu_device)


if __name__ == "__main__":
    main()
