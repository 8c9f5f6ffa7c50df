"""Trainer throughput at stage-2 settings: tokens/s, MFU and data-loader stall, side by side with a
plain Hugging Face Qwen2 decoder of the same LLM config (the LLM alone, unpacked, no images).

    python benchmarks/bench_trainer.py           # one H100: ViT-L/14 at 448 px + Qwen2 (1.47 B)
    python benchmarks/bench_trainer.py --tiny    # the same code, tiny, on the CPU (seconds)

The data are synthetic shards written on the spot (640x480 JPEG photos-like images with captions,
plus pure-text documents), mixed 70/30 from a stage-2 manifest: 448 px, rows of 2048 tokens,
same-task packing, 256 queries per image. Throughput counts non-padding LLM tokens. MFU counts
matmul FLOPs (trainer.train.flops_counter) against the dense bf16 peak. The stall fraction is
the time the loop waited for the loader over the wall time.
"""
from __future__ import annotations

import argparse
import gc
import io
import itertools
import json
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
import yaml
from PIL import Image as PILImage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from corpus.ids import sample_id  # noqa: E402
from corpus.schema import Image, Sample, Source  # noqa: E402
from corpus.shards import (atomic_write, every_one, read_shard, tar_samples,  # noqa: E402
                           write_tar)
from manifests.build import shard_digest  # noqa: E402
from trainer.train import peak_flops, train  # noqa: E402

MODELS = {
    # ViT-L/14 (0.30 B) + adapter + Qwen2 of 12 layers x 2048 (0.54 B body, 0.62 B embeddings)
    "1b": {"visual": {"width": 1024, "layers": 24, "head_width": 64},
           "adapter": {"queries": 256},
           "llm": {"hidden_size": 2048, "layers": 12, "heads": 16, "kv_heads": 4,
                   "intermediate_size": 5632, "vocab_size": 151936}},
    "tiny": {"visual": {"width": 64, "layers": 2, "head_width": 32},
             "adapter": {"queries": 16},
             "llm": {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2,
                     "intermediate_size": 128}},
}
WORDS = ("a the red blue small large dog cat street house tree car person sitting standing near "
         "under over old new bright dark city river mountain table window light shadow").split()


def photo(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A smooth, photo-like JPEG (low-frequency colour field plus grain), quality 90."""
    field = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    image = PILImage.fromarray(field).resize((width, height), PILImage.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
    buffer = io.BytesIO()
    PILImage.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def make_shards(root: str, captions: int, texts: int, size: tuple[int, int],
                shards_per_task: int = 1) -> dict[str, list[tuple[str, int]]]:
    """Each task's shards, with their sample counts."""
    rng, pick = np.random.default_rng(0), random.Random(0)
    caption_samples = [
        Sample(id=sample_id("bench", f"c{i}"), dataset="bench", task="captioning",
               source=Source(uri=f"bench://c{i}"), text=words(pick, pick.randint(8, 24)),
               images=[Image(photo(rng, *size), "jpeg", *size)])
        for i in range(captions)]
    text_samples = [
        Sample(id=sample_id("bench", f"t{i}"), dataset="bench", task="text",
               source=Source(uri=f"bench://t{i}"), text=words(pick, pick.randint(100, 600)))
        for i in range(texts)]
    shards: dict[str, list[tuple[str, int]]] = {}
    for task, samples in (("captioning", caption_samples), ("text", text_samples)):
        for index in range(shards_per_task):
            part = samples[index::shards_per_task]
            path = os.path.join(root, f"{task}-{index:05d}-of-{shards_per_task:05d}.tar")
            with atomic_write(path) as f:
                write_tar(part, f)
            shards.setdefault(task, []).append((path, len(part)))
    return shards


def write_manifest(path: str, shards: dict[str, list[tuple[str, int]]], image_size: int,
                   seq_len: int, stage: int = 2,
                   weights: dict[str, float] | None = None) -> str:
    """A stage manifest over `shards` (stage 2's packs rows; stages 1 and 3 put a sample in a
    row); `weights` per task, by default 70/30 captions and text."""
    weights = weights or {"captioning": 0.7, "text": 0.3}
    sources = []
    for task, task_shards in sorted(shards.items()):
        entries = []
        for shard, samples in task_shards:
            digest, size = shard_digest(shard)
            entries.append({"path": shard, "samples": samples, "bytes": size, "sha256": digest})
        sources.append({"task": task, "weight": weights[task],
                        "samples": sum(e["samples"] for e in entries),
                        "bytes": sum(e["bytes"] for e in entries), "shards": entries,
                        "provenance": [{"report": None, "pipeline": "bench", "dataset": "bench",
                                        "config": {}}]})
    document = {"manifest_version": 1, "stage": stage, "image_size": image_size,
                "seq_len": seq_len, "packing": stage == 2, "seed": 0, "tokenizer": None,
                "expected_samples_per_epoch": sum(s["samples"] for s in sources),
                "sources": sources}
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(document, f, sort_keys=False)
    return path


def plain_decoder(model: dict, vocab_size: int, device: torch.device):
    """Hugging Face Qwen2ForCausalLM of the model's LLM shape, sdpa attention, random init."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    llm = model["llm"]
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=llm["hidden_size"],
                         intermediate_size=llm["intermediate_size"],
                         num_hidden_layers=llm["layers"], num_attention_heads=llm["heads"],
                         num_key_value_heads=llm["kv_heads"], tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        return Qwen2ForCausalLM(config)


def plain_llm(model: dict, rows: int, seq_len: int, steps: int, warmup: int,
              device: torch.device) -> dict[str, float]:
    """The reference: Hugging Face Qwen2ForCausalLM alone, random tokens, labels = inputs."""
    net = plain_decoder(model, model["llm"].get("vocab_size", 4096), device)
    config = net.config
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=0.05, fused=device.type == "cuda")
    ids = torch.randint(0, config.vocab_size, (rows, seq_len), device=device)
    bf16 = device.type == "cuda"
    body = sum(p.numel() for p in net.parameters()) - 2 * config.vocab_size * config.hidden_size
    # as trainer.train.flops_counter counts: causal attention over the whole row
    per_token = 6 * (body + config.num_hidden_layers * seq_len * config.hidden_size
                     + config.hidden_size * config.vocab_size)
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = net(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    tokens = rows * seq_len * steps
    result = {"tokens_per_s": tokens / elapsed, "data_wait": 0.0}
    peak = peak_flops(device)
    if peak:
        result["mfu"] = per_token * tokens / elapsed / peak
    del net, optimizer, loss
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def trainer_run(manifest: str, output: str, model: dict, variant: str, args,
                device: torch.device) -> dict[str, float]:
    attention, *options = variant.split("+")
    unknown = set(options) - {"compile", "ac"}
    if unknown:
        raise SystemExit(f"variant {variant}: unknown option(s) {sorted(unknown)}")
    model = {**model, "llm": {**model["llm"], "attn_implementation": attention}}
    overrides = {"model": model, "compile": "compile" in options,
                 "activation_checkpointing": ["visual", "llm"] if "ac" in options else [],
                 "steps": args.warmup + args.steps, "warmup_steps": 10,
                 "micro_batch_size": args.micro_batch,
                 "global_batch": args.micro_batch * args.grad_accum,
                 "num_workers": args.workers, "prefetch": 4, "log_every": args.warmup}
    result = train(manifest, 2, output, overrides=overrides, device=str(device), progress=False,
                   checkpoints=False)
    measured = result.log[1:] or result.log  # the first interval holds the warm-up
    summary = {key: sum(entry[key] for entry in measured) / len(measured)
               for key in ("tokens_per_s", "data_wait", "mfu") if key in measured[0]}
    summary["first_loss"] = result.losses[0]
    if device.type == "cuda":
        summary["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return summary


def component_mfu(model: dict, device: torch.device, image_size: int, images: int, rows: int,
                  seq_len: int, iters: int) -> dict[str, float]:
    """MFU of the ViT (+ adapter) and of the LLM body alone, forward + backward, bf16, to show
    where a step's time goes. LLM rows are packed with 7 samples each, like the caption rows."""
    from corpus.tokens import IMAGE_PAD, TextTokenizer
    from trainer.model import QwenVL
    from trainer.stages import model_config

    tokenizer = TextTokenizer.default()
    with torch.device(device):
        net = QwenVL(model_config(model), image_size, tokenizer.vocab_size,
                     tokenizer.token_id(IMAGE_PAD))
    plain = plain_decoder(model, tokenizer.vocab_size, device)
    pixels = torch.randint(0, 256, (images, image_size, image_size, 3), dtype=torch.uint8,
                           device=device)
    ids, positions, layout = packed_rows(tokenizer.vocab_size, rows, seq_len, net.image_pad_id,
                                         device)
    patches = net.visual.grid_size[0] * net.visual.grid_size[1] + 1
    vit = sum(p.numel() for p in net.visual.parameters())
    vit_width = net.visual.transformer.width
    vit_attention = 2 * len(net.visual.transformer.resblocks) * patches * vit_width  # per token
    llm = net.llm.config
    body = (sum(p.numel() for p in net.llm.parameters()) - 2 * llm.vocab_size * llm.hidden_size)
    bounds = layout.sample_bounds.double()
    squares = float(((bounds[1:] - bounds[:-1]) ** 2).sum())
    llm_attention = llm.num_hidden_layers * llm.hidden_size * squares / (rows * seq_len)
    # the plain decoder's rows are one causal sequence each
    plain_attention = llm.num_hidden_layers * llm.hidden_size * seq_len
    cases = {"ViT + adapter": (lambda: net.encode_images(pixels),
                               6 * (vit + vit_attention) * patches * images),
             "plain HF decoder body, sdpa": (lambda: plain.model(input_ids=ids).last_hidden_state,
                                             6 * (body + plain_attention) * rows * seq_len)}
    for attention in ("sdpa", "varlen") if device.type == "cuda" else ("sdpa",):
        cases[f"LLM body, {attention}"] = (
            lambda a=attention: _with_attention(
                net, a, lambda: net.hidden_states(ids, positions, layout=layout)),
            6 * (body + llm_attention) * rows * seq_len)
    peak = peak_flops(device)
    results = {}
    for name, (run, flops) in cases.items():
        for i in range(iters + 1):
            if i == 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = run()
            out.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / iters
        results[name] = flops / seconds / peak if peak else seconds
    del net, plain
    gc.collect()
    return results


def packed_rows(vocab_size: int, rows: int, seq_len: int, image_pad_id: int,
                device: torch.device):
    """Random token rows (no special tokens) of 7 packed samples each, and their layout
    computed on the CPU, as the trainer's loader gives it."""
    from trainer.data import PackedLayout

    ids = torch.randint(64, vocab_size, (rows, seq_len))
    positions = (torch.arange(seq_len) % (seq_len // 7 + 1)).expand(rows, -1).contiguous()
    layout = PackedLayout.of(ids, positions, image_pad_id)
    return ids.to(device), positions.to(device), layout.to(device)


def profile_llm_bodies(model: dict, device: torch.device, image_size: int, rows: int,
                       seq_len: int, iters: int, folder: str) -> dict[str, str]:
    """The torch profiler over forward + backward of the plain Hugging Face decoder and of the
    trainer's LLM body (its `hidden_states`, each attention it has here), same shapes, side by
    side: the operators each spends its time in, printed, and a Chrome trace of each in
    `folder` (chrome://tracing, Perfetto). Where the trainer's body pays what the plain model
    does not shows here first."""
    from torch.profiler import ProfilerActivity, profile

    from corpus.tokens import IMAGE_PAD, TextTokenizer
    from trainer.model import QwenVL
    from trainer.stages import model_config

    tokenizer = TextTokenizer.default()
    plain = plain_decoder(model, tokenizer.vocab_size, device)
    with torch.device(device):
        ours = QwenVL(model_config(model), image_size, tokenizer.vocab_size,
                      tokenizer.token_id(IMAGE_PAD))
    ids, positions, layout = packed_rows(tokenizer.vocab_size, rows, seq_len, ours.image_pad_id,
                                         device)
    cases = {"plain HF Qwen2": lambda: plain.model(input_ids=ids).last_hidden_state}
    for attention in ("sdpa", "varlen") if device.type == "cuda" else ("sdpa",):
        cases[f"trainer LLM body, {attention}"] = (
            lambda a=attention: _with_attention(
                ours, a, lambda: ours.hidden_states(ids, positions, layout=layout)))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    os.makedirs(folder, exist_ok=True)
    traces = {}
    for name, run in cases.items():
        for _ in range(2):  # warm-up: kernels chosen, caches filled
            _forward_backward(run, device)
        with profile(activities=activities, record_shapes=True) as profiler:
            for _ in range(iters):
                _forward_backward(run, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
        print(f"\nprofile: {name}, {iters} forward + backward of {rows} x {seq_len} tokens")
        print(profiler.key_averages().table(sort_by=sort_by, row_limit=15))
        traces[name] = os.path.join(folder, name.replace(", ", "-").replace(" ", "_") + ".json")
        profiler.export_chrome_trace(traces[name])
    del plain, ours
    gc.collect()
    return traces


def _forward_backward(run, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = run()
    out.float().square().mean().backward()


def _with_attention(net, attention: str, run):
    net.llm.config._attn_implementation = attention
    return run()


def loader_stall(manifest: str, model: dict, image_size: int, seq_len: int, args,
                 ahead: int, read_first: bool = False) -> float:
    """The share of a training loop's time spent waiting for its micro-batches, with the model
    replaced by a simulated step: `args.launch` seconds holding the GIL (the loop launching
    kernels), then the rest of `args.step_seconds` waiting on the device (a sleep: a CUDA
    synchronisation releases the GIL too), shared evenly by the step's micro-batches, each
    trained as it comes, as the trainer does; with `read_first` a step's micro-batches are all
    read before the first trains, as the trainer did before. `ahead` is its `batches_ahead`."""
    from corpus.tokens import TextTokenizer
    from trainer.data import build_loader, read_manifest

    loader = build_loader(read_manifest(manifest), TextTokenizer.default(),
                          model["adapter"]["queries"], seq_len, image_size, 0, args.micro_batch,
                          args.workers, 4, 256, batches_ahead=ahead)
    batches = iter(loader)

    def train(passes: int) -> None:
        share = passes / args.grad_accum
        launched = time.perf_counter() + args.launch * share
        while time.perf_counter() < launched:
            pass
        time.sleep(max(0.0, args.step_seconds - args.launch) * share)

    read_together = args.grad_accum if read_first else 1  # micro-batches read before training
    waited, started = 0.0, time.perf_counter()
    try:
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                waited, started = 0.0, time.perf_counter()
            for _ in range(args.grad_accum // read_together):
                asked = time.perf_counter()
                for _ in range(read_together):
                    next(batches)
                waited += time.perf_counter() - asked
                train(read_together)
    finally:
        loader.close()
    return waited / (time.perf_counter() - started)


def data_per_rank(manifest: str, model: dict, seq_len: int, rows: int,
                  ranks: int) -> dict[str, float]:
    """Seconds one of `ranks` ranks spends reading, tokenizing and packing its next `rows` rows
    (images are decoded later, by the workers): from its own data lane, as the loader does, and
    drawing every rank's rows to keep its own, as a loader without lanes must."""
    from corpus.tokens import TextTokenizer
    from trainer.data import PackStream, SampleEncoder, read_manifest

    stage = read_manifest(manifest)
    encoder = SampleEncoder(TextTokenizer.default(), model["adapter"]["queries"], seq_len)

    def draw(lanes: int, packs: int) -> float:
        stream = PackStream(stage, encoder, 0, 256, 0, lanes)
        started = time.perf_counter()
        for _ in range(packs):
            stream.next_pack()
        return time.perf_counter() - started

    return {"own_lane": draw(ranks, rows), "every_rank": draw(1, rows * ranks)}


class ReadThrough(io.RawIOBase):
    """A file that can only be read through (a pipe, a stream over the network)."""

    def __init__(self, path: str):
        self.file = open(path, "rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self.file.readinto(buffer)

    def close(self) -> None:
        self.file.close()
        super().close()


def shared_shard_reading(shards: list[str], root: str, lanes: int) -> dict[str, float]:
    """Seconds to read a task held in one shard (fewer shards than lanes: each lane keeps every
    lanes-th sample): one lane's samples as the loader reads them, the other lanes' passed over
    unparsed; every sample parsed to keep the lane's, read through as a stream (as the loader
    did before seeking); and the shard whole, seeking past nothing vs read through."""
    from trainer.data import Position, ShardReader

    path = os.path.join(root, "shared.tar")
    with atomic_write(path) as f:
        write_tar(itertools.chain.from_iterable(read_shard(shard) for shard in shards), f)

    def timed(read) -> tuple[float, list[str]]:
        started = time.perf_counter()
        ids = read()
        return time.perf_counter() - started, ids

    def read_through(keep) -> list[str]:
        with ReadThrough(path) as stream:
            return [sample.id for index, sample in enumerate(tar_samples(stream, every_one, path))
                    if keep(index)]

    every_sample, parsed = timed(lambda: read_through(lambda index: index % lanes == 0))
    own, kept = timed(lambda: [sample.id for sample in ShardReader(
        "shared", [path], 0, 0, lanes).read(Position(), len(parsed))[0]])
    assert kept == parsed
    whole_through, through = timed(lambda: read_through(lambda index: True))
    whole, read = timed(lambda: [sample.id for sample in read_shard(path)])
    assert read == through
    return {"own_lane": own, "every_sample_read_through": every_sample, "kept": len(kept),
            "whole": whole, "whole_read_through": whole_through, "samples": len(read)}


def print_goals(results: dict) -> None:
    """The trainer's speed goals, each with the best trainer setting's figure (GPU runs only:
    MFU needs a known peak)."""
    plain = results["plain HF Qwen2, LLM only"].get("mfu")
    runs = {name: r for name, r in results.items() if name.startswith("trainer, ") and "mfu" in r}
    if plain is None or not runs:
        return
    name, best = max(runs.items(), key=lambda item: item[1]["mfu"])
    body = results.get("components_mfu", {}).get("LLM body, varlen")
    goals = [(f"trainer MFU / plain HF MFU >= 1.0 ({name})", best["mfu"] / plain,
              best["mfu"] / plain >= 1.0),
             (f"trainer MFU >= 45 % ({name})", best["mfu"], best["mfu"] >= 0.45),
             (f"loader stall < 2 % ({name})", best["data_wait"], best["data_wait"] < 0.02)]
    if body is not None:
        goals.append(("LLM body MFU, varlen >= plain HF whole-model MFU", body, body >= plain))
    for goal, value, met in goals:
        shown = f"{value:.2f}" if "/" in goal else f"{value:.1%}"
        print(f"goal: {goal}: {shown} {'met' if met else 'NOT met'}")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model, CPU, a few steps")
    parser.add_argument("--steps", type=int, help="measured steps (after the warm-up interval)")
    parser.add_argument("--warmup", type=int, help="steps in the first, unmeasured interval")
    parser.add_argument("--micro-batch", type=int, help="packed rows per forward pass")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    parser.add_argument("--workers", type=int, help="image-decoding processes")
    parser.add_argument("--variants", nargs="+",
                        help="trainer settings to measure: an attention (sdpa, varlen), then "
                             "+compile and +ac (activation checkpointing of the ViT and the "
                             "LLM), e.g. varlen+compile+ac (default: sdpa and, on CUDA, varlen)")
    parser.add_argument("--no-components", action="store_true",
                        help="skip the per-component MFU breakdown")
    parser.add_argument("--loader-only", action="store_true",
                        help="only the data loader's stall, against a simulated step, with the "
                             "batches made in the loop and in the background thread (any "
                             "machine)")
    parser.add_argument("--step-seconds", type=float, default=0.6,
                        help="the simulated step (default: the H200's stage-2 step, 8 rows of "
                             "2048 tokens at 26,840 tokens/s)")
    parser.add_argument("--launch", type=float, default=0.15,
                        help="seconds of the simulated step that hold the GIL")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--profile", metavar="DIR",
                        help="also profile the plain decoder and the trainer's LLM body side "
                             "by side: operator tables printed, Chrome traces written to DIR")
    args = parser.parse_args(argv)
    tiny = args.tiny
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    args.steps = args.steps or (2 if tiny else 20)
    args.warmup = args.warmup or (1 if tiny else 5)
    args.micro_batch = args.micro_batch or 2
    args.grad_accum = args.grad_accum or (1 if tiny else 4)
    args.workers = args.workers if args.workers is not None else (1 if tiny else 12)
    model = MODELS["tiny" if tiny else "1b"]
    image_size, seq_len = (56, 256) if tiny else (448, 2048)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as root:
        counts = {"captioning": 16, "text": 8} if tiny else {"captioning": 600, "text": 200}
        started = time.perf_counter()
        # as many shards per task as ranks below: each rank's lane reads whole shards
        shards = make_shards(root, counts["captioning"], counts["text"],
                             (64, 48) if tiny else (640, 480), shards_per_task=16)
        manifest = write_manifest(os.path.join(root, "stage2.yaml"), shards, image_size, seq_len)
        print(f"shards: {counts} in {time.perf_counter() - started:.1f} s")
        if args.loader_only:
            rows = args.steps * args.grad_accum * args.micro_batch
            for ranks in (2,) if tiny else (4, 16):
                seconds = data_per_rank(manifest, model, seq_len, rows, ranks)
                results[f"data per rank, {ranks} ranks"] = seconds
                ratio = seconds["every_rank"] / seconds["own_lane"]
                print(f"data per rank, {ranks} ranks, {rows} rows (read, tokenize, pack): "
                      f"{seconds['own_lane']:.2f} s from its own lane, "
                      f"{seconds['every_rank']:.2f} s drawing every rank's rows: ratio {ratio:.1f}")
            seconds = shared_shard_reading([path for path, _ in shards["captioning"]], root, 16)
            results["shared shard, 16 lanes"] = seconds
            print(f"a task in one shard of {seconds['samples']} samples, 16 lanes: a lane's "
                  f"{seconds['kept']} in {seconds['own_lane']:.3f} s passing over the others' "
                  f"unparsed, {seconds['every_sample_read_through']:.3f} s parsing every sample "
                  f"read through: ratio "
                  f"{seconds['every_sample_read_through'] / seconds['own_lane']:.1f}; the whole "
                  f"shard {seconds['whole']:.3f} s, {seconds['whole_read_through']:.3f} s read "
                  f"through: ratio {seconds['whole_read_through'] / seconds['whole']:.1f}")
            for ahead in (0, 8):
                stall = loader_stall(manifest, model, image_size, seq_len, args, ahead)
                results[f"loader, batches_ahead {ahead}"] = {"data_wait": stall}
                print(f"loader stall, batches_ahead {ahead}: {stall:.1%} of a simulated "
                      f"{args.step_seconds:.2f} s step ({args.launch:.2f} s holding the GIL), "
                      f"{args.workers} worker(s)")
            # a step of more micro-batches than are made ahead: read whole first, the loop
            # waits for the rest of it while the device idles
            first = loader_stall(manifest, model, image_size, seq_len, args, ahead, True)
            results[f"loader, batches_ahead {ahead}, a step read first"] = {"data_wait": first}
            print(f"loader stall, batches_ahead {ahead}, {args.grad_accum} micro-batches a step: "
                  f"{first:.1%} read whole before the first trains, {stall:.1%} each trained "
                  f"as it comes")
            return results
        rows = args.micro_batch * args.grad_accum
        results["plain HF Qwen2, LLM only"] = plain_llm(
            model, rows, seq_len, args.steps, args.warmup, device)
        variants = args.variants or (["sdpa", "varlen"] if device.type == "cuda" else ["sdpa"])
        for variant in variants:
            while True:
                try:
                    results[f"trainer, {variant}"] = trainer_run(
                        manifest, os.path.join(root, f"run-{variant}"), model, variant, args,
                        device)
                    break
                except torch.OutOfMemoryError:
                    if args.micro_batch == 1:
                        raise
                args.micro_batch //= 2  # same rows per step, in smaller forward passes
                args.grad_accum *= 2
                gc.collect()
                torch.cuda.empty_cache()
                print(f"out of memory: now micro-batch {args.micro_batch} x {args.grad_accum}")
    print(f"\n{'setting':<28}{'tokens/s':>12}{'MFU':>8}{'stall':>8}{'loss@1':>9}")
    for name, r in results.items():
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        loss = f"{r['first_loss']:.3f}" if "first_loss" in r else "-"
        print(f"{name:<28}{r['tokens_per_s']:>12,.0f}{mfu:>8}{r['data_wait']:>8.1%}{loss:>9}")
    plain = results["plain HF Qwen2, LLM only"]
    for name, r in results.items():
        if name.startswith("trainer") and "mfu" in r and "mfu" in plain:
            print(f"MFU ratio {name} / plain LLM: {r['mfu'] / plain['mfu']:.2f}")
    if "trainer, varlen" in results and "trainer, sdpa" in results:
        varlen, sdpa = results["trainer, varlen"], results["trainer, sdpa"]
        ratio = varlen["tokens_per_s"] / sdpa["tokens_per_s"]
        print(f"tokens/s ratio varlen / sdpa attention: {ratio:.2f}")
    if device.type == "cuda" and not args.no_components:
        parts = component_mfu(model, device, image_size, 14, args.micro_batch, seq_len, 5)
        for name, mfu in parts.items():
            print(f"component MFU, {name}: {mfu:.1%}")
        plain_body = parts["plain HF decoder body, sdpa"]
        for name in (n for n in parts if n.startswith("LLM body")):
            print(f"component MFU ratio trainer {name} / plain decoder body: "
                  f"{parts[name] / plain_body:.2f}")
        results["components_mfu"] = parts
    print_goals(results)
    if args.profile:
        results["profile_traces"] = profile_llm_bodies(model, device, image_size,
                                                       args.micro_batch, seq_len, 3, args.profile)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
