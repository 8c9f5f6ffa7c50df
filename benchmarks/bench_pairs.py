"""Benchmarks of `corpus pairs`, each a ratio of two rates measured side by side in one run.

  rules   the non-CLIP rules through the Beam pipeline (1 worker, in-process runner) vs a bare
          Python loop applying the same reader and rule functions to the same input (goal >= 0.7x)
  workers 2 worker processes vs 1 (multi_processing DirectRunner; goal >= 1.7x)
  clip    CLIP scoring images/s at batch 1 vs a tuned batch, model only, CPU
  scale   N vs 10 N pairs through the pipeline: time ratio (goal <= 11x) and peak memory
  gpu     (a CUDA machine) pipeline pairs/s with CLIP on CUDA vs the model-only forward rate on
          the same decoded batches (goal >= 0.8x)

Defaults are small, to finish in well under a minute on a laptop; `--full` uses the issue's
sizes (10k pairs; 10k vs 100k for scale). Inputs are img2dataset-style tars made on the spot.

  python benchmarks/bench_pairs.py [--full] [--only rules workers clip scale gpu]
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
IN_PROCESS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def write_inputs(directory: str, n: int, per_tar: int = 1000,
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


def no_clip_config():
    from pipelines.pairs import PairsConfig

    config = PairsConfig()
    config.image.verify_decode = False  # decoding is measured by the clip benchmark
    return config


def bare_loop(paths: list[str], output: str) -> int:
    """The same reader, rules and longest-caption choice, in one Python loop, one tar out."""
    from corpus.shards import write_tar
    from filters.base import Reject, apply_rules
    from filters.image_rules import image_rules
    from pipelines.pairs import InputFile, PairReader, text_rules

    config = no_clip_config()
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


def pipeline_seconds(paths: list[str], output: str, beam_argv: list[str]) -> tuple[float, dict]:
    from pipelines.pairs import run

    started = time.perf_counter()
    report = run(paths, output, "bench", no_clip_config(), beam_argv)
    return time.perf_counter() - started, report


def bench_rules(work: str, n: int) -> None:
    """Both run in this process; CPU seconds are the fair measure on a shared machine (wall
    seconds printed too). The language model is loaded and the pipeline run once on a few
    pairs first, so one-time imports (the runner's modules, the report plot's matplotlib) fall
    outside both timings; a second run on those few pairs times the fixed cost of a run (graph
    construction, runner start, report and plot), which the Beam figure includes."""
    paths = write_inputs(os.path.join(work, "rules-in"), n)
    bare_loop(paths[:1], os.path.join(work, "warm-up.tar"))  # fastText model, emoji tables
    few = write_inputs(os.path.join(work, "rules-few"), 50)
    pipeline_seconds(few, os.path.join(work, "warm-up-1"), IN_PROCESS)
    cpu = time.process_time()
    pipeline_seconds(few, os.path.join(work, "warm-up-2"), IN_PROCESS)
    fixed_cpu = time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    kept_loop = bare_loop(paths, os.path.join(work, "loop.tar"))
    loop_wall, loop_cpu = time.perf_counter() - wall, time.process_time() - cpu
    cpu = time.process_time()
    beam_wall, report = pipeline_seconds(paths, os.path.join(work, "rules-out"), IN_PROCESS)
    beam_cpu = time.process_time() - cpu
    assert report["kept"] == kept_loop, (report["kept"], kept_loop)
    print(f"rules   {n} pairs: bare loop {n / loop_cpu:6.0f} pairs/cpu-s "
          f"({n / loop_wall:.0f}/s wall), "
          f"Beam 1 worker {n / beam_cpu:6.0f} pairs/cpu-s ({n / beam_wall:.0f}/s wall) -> "
          f"ratio {loop_cpu / beam_cpu:.2f}x (kept {kept_loop}); fixed cost of a run "
          f"{fixed_cpu:.2f} cpu-s; ratio without it {loop_cpu / (beam_cpu - fixed_cpu):.2f}x")


def bench_workers(work: str, n: int) -> None:
    """End to end, and marginal: a 50-pair run at the same worker count times what does not
    spread over workers (runner and worker start, graph, report), and is subtracted."""
    paths = write_inputs(os.path.join(work, "workers-in"), n, per_tar=max(1, n // 8))
    few = write_inputs(os.path.join(work, "workers-few"), 50)
    rates, marginal = {}, {}
    for workers in (1, 2):
        argv = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={workers}"]
        startup, _ = pipeline_seconds(few, os.path.join(work, f"workers-few-{workers}"), argv)
        seconds, _ = pipeline_seconds(paths, os.path.join(work, f"workers-out-{workers}"), argv)
        rates[workers], marginal[workers] = n / seconds, (n - 50) / (seconds - startup)
    print(f"workers {n} pairs: 1 worker {rates[1]:7.0f} pairs/s, 2 workers {rates[2]:7.0f} "
          f"pairs/s -> {rates[2] / rates[1]:.2f}x; marginal (a 50-pair run subtracted) "
          f"{marginal[1]:.0f} vs {marginal[2]:.0f} pairs/s -> {marginal[2] / marginal[1]:.2f}x")


def bench_clip(work: str, model: str, batch: int, images: int, device: str = "cpu",
               precision: str = "fp32") -> float:
    from filters.image_rules import decode_for_model
    from pipelines.clip import ClipConfig, OpenClipModelHandler, model_input_size

    config_path, checkpoint = clip_files(work, model)
    config = ClipConfig(model=model, checkpoint=checkpoint, model_config=config_path,
                        device=device, precision=precision)
    loaded = OpenClipModelHandler(config).load_model()
    size = model_input_size(config)
    pixels = [decode_for_model(make_photo(320, 240, seed=i), size) for i in range(16)]
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(16)]
    rates = {}
    for batch_size in (1, batch):
        loaded.score(pixels[:1] * batch_size, texts[:1] * batch_size)  # warm-up
        started, done = time.perf_counter(), 0
        while done < images:
            chunk = [pixels[(done + j) % 16] for j in range(batch_size)]
            loaded.score(chunk, [texts[(done + j) % 16] for j in range(batch_size)])
            done += batch_size
        rates[batch_size] = done / (time.perf_counter() - started)
    print(f"clip    {model} {precision} on {device}: batch 1 {rates[1]:7.1f} img/s, batch {batch} "
          f"{rates[batch]:7.1f} img/s -> {rates[batch] / rates[1]:.2f}x")
    return rates[batch]


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


def bench_scale(work: str, n: int) -> None:
    results = {}
    for size in (n, 10 * n):
        paths_dir = os.path.join(work, f"scale-in-{size}")
        write_inputs(paths_dir, size)
        # A child process per size: its peak resident memory is its own.
        child = subprocess.run(
            [sys.executable, __file__, "--scale-child", paths_dir,
             os.path.join(work, f"scale-{size}")],
            capture_output=True, text=True, check=True)
        results[size] = json.loads(child.stdout.strip().splitlines()[-1])
    small, large = results[n], results[10 * n]
    print(f"scale   {n} vs {10 * n} pairs: time {small['seconds']:.1f} s vs "
          f"{large['seconds']:.1f} s "
          f"-> {large['seconds'] / small['seconds']:.1f}x; peak memory {small['peak_mb']:.0f} MB "
          f"vs {large['peak_mb']:.0f} MB")


def scale_child(input_dir: str, output: str) -> None:
    paths = sorted(os.path.join(input_dir, p) for p in os.listdir(input_dir))
    seconds, _ = pipeline_seconds(paths, output, IN_PROCESS)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024}))


def bench_gpu(work: str, n: int, model: str, batch: int, device: str = "cuda") -> None:
    """Pipeline with CLIP on the GPU vs the model-only rate on the same kind of images. The
    pipeline time includes loading the model (once per machine on CUDA: a shared model);
    the ratio is printed with and without the loading time, measured on its own."""
    import dataclasses

    from pipelines.clip import ClipConfig
    from pipelines.pairs import PairsConfig, run

    precision = "bf16" if device.startswith("cuda") else "fp32"
    model_rate = bench_clip(work, model, batch, images=batch * 20, device=device,
                            precision=precision)
    paths = write_inputs(os.path.join(work, "gpu-in"), n, size=(640, 480))  # LAION-like sizes
    config_path, checkpoint = clip_files(work, model)
    config = PairsConfig(clip=ClipConfig(model=model, checkpoint=checkpoint,
                                         model_config=config_path, device=device,
                                         batch_size=batch, threshold=-1.0, precision=precision))
    # Every pair reaches the model: the rules that would drop some are off.
    config = dataclasses.replace(config, text=dataclasses.replace(
        config.text, allowed_scripts=False, drop_emoji=False, min_chars=0, tag_language=False,
        patterns=[], recheck_length_after_cleaning=False, academic_tags=[]))
    config.image.max_aspect_ratio = config.image.min_side = None
    from pipelines.clip import OpenClipModelHandler

    started = time.perf_counter()
    OpenClipModelHandler(config.clip).load_model()
    load_seconds = time.perf_counter() - started  # inside the pipeline once (shared on CUDA)
    workers = os.cpu_count() or 1
    argv = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}"]
    started = time.perf_counter()
    report = run(paths, os.path.join(work, "gpu-out"), "bench", config, argv)
    seconds = time.perf_counter() - started
    scored = report["stats"].get("clip_scored", 0)
    print(f"gpu     pipeline {model} {precision} batch {batch}, {workers} workers: {scored} of "
          f"{n} scored in {seconds:.1f} s -> {scored / seconds:.0f} pairs/s vs model only "
          f"{model_rate:.0f} img/s -> {scored / seconds / model_rate:.2f}x; model loading "
          f"{load_seconds:.1f} s of it (shared model: {config.clip.shared_model}), without it "
          f"{scored / (seconds - load_seconds) / model_rate:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's sizes (slow)")
    parser.add_argument("--only", nargs="+", default=["rules", "workers", "clip", "scale"],
                        choices=["rules", "workers", "clip", "scale", "gpu"])
    parser.add_argument("--clip-model", default="corpus-tiny-clip",
                        help="open_clip architecture for the clip benchmark (random weights); "
                             "e.g. ViT-B-32")
    parser.add_argument("--clip-batch", type=int, default=32)
    parser.add_argument("--pairs", type=int, help="pairs for rules and workers (default: 1,000; "
                        "10,000 with --full)")
    parser.add_argument("--gpu-pairs", type=int, default=20_000, help="pairs for the gpu benchmark")
    parser.add_argument("--gpu-device", default="cuda")
    parser.add_argument("--scale-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_child:
        scale_child(*args.scale_child)
        return
    n = args.pairs or (10_000 if args.full else 1_000)
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cores; "
          f"sizes: {'full' if args.full else 'small'}")
    with tempfile.TemporaryDirectory() as work:
        if "rules" in args.only:
            bench_rules(work, n)
        if "workers" in args.only:
            bench_workers(work, n)
        if "clip" in args.only:
            bench_clip(work, args.clip_model, args.clip_batch, images=args.clip_batch * 4)
        if "scale" in args.only:
            bench_scale(work, n if args.full else 300)
        if "gpu" in args.only:
            bench_gpu(work, args.gpu_pairs, args.clip_model, args.clip_batch, args.gpu_device)


if __name__ == "__main__":
    main()
