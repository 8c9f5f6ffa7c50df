"""One training stage, top to bottom: config -> model -> optimizer -> data -> loop -> checkpoints.

Every rank writes its part of each checkpoint, and any number of ranks reads it back
(trainer/checkpoint.py). `--resume` restores all of it and continues
with the same batches and the same learning rates; `--init` starts a new stage from a previous
stage's checkpoint (the weights and the tokenizer; the ViT position grid is interpolated when the
image size changes).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from corpus.config import ConfigError, from_mapping
from corpus.tokens import IMAGE_PAD, TextTokenizer
from trainer.checkpoint import (CheckpointWriter, in_parts, load_model, load_optimizer,
                                read_state, resolve_checkpoint)
from trainer.data import (Batch, build_loader, corpus_texts, data_lanes, merge_states,
                          read_manifest, sample_shares, shared_shards_note, task_samples)
from trainer.model import (QwenVL, apply_freeze_plan, checkpoint_activations, compile_blocks,
                           parameter_counts)
from trainer.distributed import (World, hybrid_note, join_world, replicated_note,
                                 state_copies)
from trainer.stages import COMPONENTS, ModelConfig, StageConfig, model_config, stage_config
from trainer.weights import InitialWeights, parameters_on_meta

# Dense bf16 peak FLOP/s by device name, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
              "L40S": 362e12, "L4": 121e12, "A10G": 70e12}


@dataclass
class TrainResult:
    checkpoint: str
    steps: int
    losses: list[float] = field(default_factory=list)  # one per step run now, in order
    log: list[dict[str, Any]] = field(default_factory=list)  # one entry per log interval
    sample_shares: dict[str, float] = field(default_factory=dict)  # per task, of samples trained


# ---- optimizer and schedule -----------------------------------------------------------------

NO_DECAY = ("positional_embedding", "class_embedding", "adapter.query")


def vit_layer(name: str, layers: int) -> int:
    """0 for the patch/position embeddings, i + 1 for block i, layers + 1 for what follows."""
    parts = name.split(".")
    if "resblocks" in parts:
        return int(parts[parts.index("resblocks") + 1]) + 1
    if parts[1] in ("conv1", "class_embedding", "positional_embedding", "ln_pre"):
        return 0
    return layers + 1


def param_groups(model: QwenVL, config: StageConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on norms, biases and position/query embeddings; the ViT's
    layer-wise lr decay as a per-group scale (a decay of 0 or 1 means none)."""
    layers = len(model.visual.transformer.resblocks)
    layerwise = 0 < config.vit_lr_decay < 1
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = 1.0
        if layerwise and name.startswith("visual."):
            scale = config.vit_lr_decay ** (layers + 1 - vit_layer(name, layers))
        decay = param.ndim >= 2 and not any(key in name for key in NO_DECAY)
        groups.setdefault((scale, decay), []).append(param)
    return [{"params": params, "lr": config.peak_lr * scale, "lr_scale": scale,
             "weight_decay": config.weight_decay if decay else 0.0}
            for (scale, decay), params in sorted(groups.items())]


def lr_factor(step: int, config: StageConfig) -> float:
    """Linear warm-up to the peak, then cosine decay to the minimum at `steps` (Table 8)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    floor = config.min_lr / config.peak_lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# ---- FLOPs for MFU --------------------------------------------------------------------------

def flops_counter(model: QwenVL, trainable: list[str]) -> Callable[[Batch], float]:
    """Matmul FLOPs of a micro-batch: 2 per weight per token forward, 2 more for the input
    gradients when anything before the part trains, 2 more for its weight gradients when it
    trains. Attention is counted as computed: causal within each packed sample in the LLM (2·n²·
    width per layer forward for a sample of n tokens), full over the 1 + patches tokens in the
    ViT. The model's sizes are read once, here; the returned count reads a batch's shapes."""
    counts = parameter_counts(model)
    llm = model.llm.config
    vit_tokens = model.visual.grid_size[0] * model.visual.grid_size[1] + 1  # per image
    factor = {
        "visual": 6 if "visual" in trainable else 2,
        "adapter": 6 if "adapter" in trainable else (4 if "visual" in trainable else 2),
        "llm": 6 if "llm" in trainable else 4,
    }
    vit_width = model.visual.transformer.width
    body = counts["llm"] - counts["llm_embeddings"] - llm.hidden_size * llm.vocab_size
    # attention as weight-equivalents (2 FLOPs each forward, like a weight): causal n²·width
    # per layer and sample in the LLM; full 2·T²·width per layer and image in the ViT
    vit_attention = 2 * len(model.visual.transformer.resblocks) * vit_tokens * vit_width

    def flops(batch: Batch) -> float:
        tokens, images = batch.input_ids.numel(), batch.pixels.shape[0]
        bounds = batch.layout.sample_bounds
        squares = float(((bounds[1:] - bounds[:-1]).double() ** 2).sum())
        attention = llm.num_hidden_layers * llm.hidden_size * squares
        return (factor["llm"] * (body * tokens + attention)
                + factor["llm"] * llm.hidden_size * llm.vocab_size * batch.supervised
                + factor["visual"] * (counts["visual"] + vit_attention) * vit_tokens * images
                + factor["adapter"] * counts["adapter"] * vit_tokens * images)

    return flops


def normalise_and_clip(parameters: list[nn.Parameter], scale: float, max_norm: float) -> None:
    """Multiply the gradients by `scale`, then clip their norm to `max_norm`: one
    multiplication does both, after one reading of their norm, and nothing is read back from
    the GPU. The backward passes ran on summed losses, whose divisor (the step's supervised
    targets over all ranks) is known only once every micro-batch of the step has been read,
    and the loop does not wait for that to begin."""
    grads = [param.grad for param in parameters if param.grad is not None]
    if not grads:
        return
    norm = torch.nn.utils.get_total_norm(grads) * scale
    torch._foreach_mul_(grads, scale * torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


# ---- the stage ------------------------------------------------------------------------------

def load_tokenizer(config: StageConfig, manifest, checkpoint: str | None) -> TextTokenizer:
    if checkpoint is not None:  # the vocabulary must match the embeddings being continued
        return TextTokenizer.load(os.path.join(checkpoint, "tokenizer.json"))
    path = config.tokenizer or manifest.tokenizer
    if path == "corpus":
        return TextTokenizer.train(corpus_texts(manifest))
    if not path:
        return TextTokenizer.default()
    return TextTokenizer.load(path, trust_remote_code=config.llm.trust_remote_code)


def build_model(config: ModelConfig, image_size: int, tokenizer: TextTokenizer) -> QwenVL:
    """The architecture, its parameters on the meta device: nothing allocated, no weights read
    (`trainer.weights.InitialWeights` fills them, on one device or one FSDP unit at a time)."""
    with parameters_on_meta():
        return QwenVL(config, image_size, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD))


def peak_host_memory_gib() -> float:
    """This process's peak resident memory so far (Linux reports kibibytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def train(manifest_path: str, stage: int, output_dir: str, config_path: str | None = None,
          init: str | None = None, resume: bool = False, overrides: dict[str, Any] | None = None,
          device: str | None = None, progress: bool | None = None,
          stop_after: int | None = None, checkpoints: bool = True) -> TrainResult:
    """Run (or continue) one stage; `stop_after` ends this call after that many steps, with a
    checkpoint, as an interruption would (the schedule still spans `steps`). `checkpoints=False`
    writes none (benchmarks). Under `torchrun`, each process is one rank
    (trainer/distributed.py)."""
    manifest = read_manifest(manifest_path)
    if manifest.stage != stage:
        raise ConfigError(
            f"{manifest_path} is a stage {manifest.stage} manifest, not stage {stage}")
    resume_from = resolve_checkpoint(output_dir) if resume else None
    if resume_from:  # the run continues exactly as it was configured
        saved = read_state(resume_from)
        config = from_mapping(StageConfig, saved["config"], f"{resume_from}/state.json")
        init_from = None
    else:
        config = stage_config(stage, config_path, overrides)
        init_from = resolve_checkpoint(init) if init else None
        if init_from:  # the architecture is the previous stage's
            config.model = model_config(read_state(init_from)["config"]["model"])
    image_size = config.image_size or manifest.image_size
    seq_len = config.seq_len or manifest.seq_len
    seed = manifest.seed if config.seed is None else config.seed
    world = join_world()
    if resume_from:  # another number of processes may continue it: the same global batch
        config.grad_accum = None
    config.grad_accum = config.accumulation(world.size)  # refuses an unreachable global batch
    fsdp = world.grouped and config.distributed == "fsdp"
    # refused here, before the model is built, if the groups cannot divide the ranks
    mesh_shape = config.fsdp_mesh(world.size) if fsdp else None
    # refused here, before the model is built, if the processes cannot share them
    config.data_lanes = data_lanes(manifest, world.size, config.data_lanes,
                                   saved["data"] if resume_from else None)
    torch.manual_seed(seed)  # every rank continues from the same generator state
    device = world.device(device)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    tokenizer = load_tokenizer(config, manifest, resume_from or init_from)
    model = build_model(config.model, image_size, tokenizer)
    # a resumed run loads its weights once the model is sharded: each rank reads its own part
    load_later = bool(resume_from) and in_parts(resume_from)
    weights = InitialWeights(model, seed, resume_from or init_from, values=not load_later)
    apply_freeze_plan(model, config.trainable)
    checkpoint_activations(model, config.activation_checkpointing)
    if config.compile:
        compile_blocks(model)
    model.encode_always = fsdp
    # the weights are filled on `device`; under FSDP one unit at a time, each sharded in place
    trained = world.wrap(model, weights, device, config.distributed, bf16,
                         config.replicate_frozen, mesh_shape,
                         getattr(torch, config.reduce_dtype))
    if load_later:
        load_model(model, resume_from, world)
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.peak_lr,
                                  betas=tuple(config.betas), eps=config.eps,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    step, counters, data_state = 0, {"tokens": 0, "samples": 0}, None
    if resume_from:
        load_optimizer(model, optimizer, resume_from, world)
        scheduler.load_state_dict(saved["scheduler"])
        step, counters, data_state = saved["step"], saved["counters"], saved["data"]

    loader = build_loader(manifest, tokenizer, model.image_tokens, seq_len, image_size, seed,
                          config.micro_batch_size, config.num_workers, config.prefetch,
                          config.pack_window, data_state, world.rank, world.size,
                          config.batches_ahead, pin_memory=device.type == "cuda",
                          lanes=config.data_lanes)
    os.makedirs(output_dir, exist_ok=True)
    run_state = {"stage": stage, "manifest": os.path.abspath(manifest_path),
                 "config": dataclasses.asdict(config), "image_size": image_size,
                 "seq_len": seq_len, "seed": seed, "init": init_from, "world": world.size}
    peak = peak_flops(device)
    counts = parameter_counts(model)
    host_memory = world.each(peak_host_memory_gib(), device)  # what start-up cost each rank
    if world.main:
        strategy_note = ""
        if fsdp:
            accumulation = (", gradients accumulated whole"
                            if config.fsdp_accumulation == "whole" else "")
            strategy_note = (" fsdp" + hybrid_note(mesh_shape) + accumulation
                             + replicated_note(model))
        if bf16 and world.size > 1 and config.reduce_dtype != "float32":
            strategy_note += f", gradients reduced in {config.reduce_dtype}"
        print(f"stage {stage}: {sum(counts[k] for k in COMPONENTS) / 1e6:.1f} M parameters (ViT "
              f"{counts['visual'] / 1e6:.1f} M, adapter {counts['adapter'] / 1e6:.1f} M, LLM "
              f"{counts['llm'] / 1e6:.1f} M); trains {'+'.join(config.trainable)}; image "
              f"{image_size}, seq_len {seq_len}; {world.size} x {device}{' bf16' if bf16 else ''}"
              f"{strategy_note}; "
              f"global batch {config.global_batch} row(s) = "
              f"{config.micro_batch_size} x {world.size} process(es) x {config.grad_accum} "
              f"pass(es); "
              f"step {step} of {config.steps}", flush=True)
        note = shared_shards_note(manifest, config.data_lanes)
        if note:
            print(note, flush=True)
        print("start-up peak host memory: " + ", ".join(
            f"rank {rank} {gib:.2f} GiB" for rank, gib in enumerate(host_memory)), flush=True)

    result = TrainResult(checkpoint=resume_from or "", steps=step)
    writer = CheckpointWriter(output_dir, config.keep_checkpoints, world, config.async_checkpoint,
                              device, state_copies(world, mesh_shape))
    batches = iter(loader)
    show = world.main and (sys.stderr.isatty() if progress is None else progress)
    bar = tqdm(total=config.steps, initial=step, unit="step", dynamic_ncols=True, disable=not show)
    log_path = os.path.join(output_dir, "log.jsonl")
    window = {"tokens": 0, "samples": 0, "flops": 0.0, "wait": 0.0, "saving": 0.0,
              "started": time.perf_counter(), "losses": []}
    # each step's loss sum on this rank and its supervised targets, read back from the device
    # once per log interval: a read per step would keep the CPU from queueing work ahead
    unread: list[tuple[torch.Tensor, int]] = []
    trainable = [param for param in model.parameters() if param.requires_grad]
    flops = flops_counter(model, config.trainable)
    model.train()
    last = config.steps if stop_after is None else min(config.steps, step + stop_after)
    try:
        while step < last:
            # each micro-batch trains as it comes: the loader keeps making the next ones
            loss_sum = torch.zeros((), device=device)
            tally = [0, 0, 0, 0]  # this rank's supervised targets, tokens, samples, images
            for index in range(config.grad_accum):
                waited = time.perf_counter()
                batch = next(batches)
                window["wait"] += time.perf_counter() - waited
                tally = [total + count for total, count in zip(tally, (
                    batch.supervised, batch.tokens, batch.samples, len(batch.pixels)))]
                if peak:  # this rank's FLOPs: MFU is per GPU
                    window["flops"] += flops(batch)
                data_position = batch.state  # where this rank's data stands after it
                batch = batch.to(device)
                with world.no_sync(trained, index == config.grad_accum - 1,
                                   config.fsdp_accumulation):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        loss = trained(batch.input_ids, batch.position_ids, batch.targets,
                                       batch.pixels, batch.layout)
                    loss.backward()  # the summed loss: normalised once the step is read
                loss_sum += loss.detach()
            # summed over the ranks on the host, so nothing waits for the GPU
            supervised, tokens, samples, images = world.host_sum(tally)
            supervised = max(1, supervised)
            if not images:
                model.forget_blank_gradients()
            # the mean over the step's supervised targets on all ranks (DDP and FSDP averaged
            # the gradients over the ranks), clipped
            normalise_and_clip(trainable, world.size / supervised, config.grad_clip)
            window["lr"] = max(group["lr"] for group in optimizer.param_groups)  # this step's
            waited = time.perf_counter()
            writer.wait_for_copy()  # a checkpoint being written still reads the weights
            window["saving"] += time.perf_counter() - waited
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            unread.append((loss_sum, supervised))
            window["tokens"] += tokens
            window["samples"] += samples
            counters["tokens"] += tokens
            counters["samples"] += samples
            bar.update(1)
            if step % config.log_every == 0 or step == last:
                losses = step_losses(unread, world, device)
                unread = []
                result.losses += losses
                window["losses"] += losses
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                result.sample_shares = world_sample_shares(data_position, world)
                metrics = _log(window, step, peak, result.sample_shares,
                               log_path if world.main else None, bar)
                result.log.append(dict(metrics, tokens_seen=counters["tokens"]))
            if checkpoints and (step % config.save_every == 0 or step == last):
                waited = time.perf_counter()
                result.checkpoint = writer.save(
                    step, model, optimizer, scheduler, tokenizer,
                    dict(run_state, data=merge_states(world.gather(data_position)),
                         counters=counters))
                window["saving"] += time.perf_counter() - waited
        writer.close()  # the last checkpoint in place
        [skipped] = world.host_sum([loader.skipped])
        world.finish()
    finally:
        bar.close()
        loader.close()
        world.close()
    if result.sample_shares and world.main:
        print(describe_shares(result.sample_shares, loader.weights))
    if skipped and world.main:
        print(f"skipped {skipped} samples: no text format, cut to seq_len {seq_len} through an "
              "image, or nothing to learn")
    result.steps = step
    return result


def world_sample_shares(state: dict[str, Any], world: World) -> dict[str, float]:
    """Each task's share of the samples all ranks have drawn, from each rank's data position."""
    tasks = task_samples(state)
    return sample_shares(dict(zip(tasks, world.host_sum(list(tasks.values())))))


def step_losses(unread: list[tuple[torch.Tensor, int]], world: World,
                device: torch.device) -> list[float]:
    """The mean loss of each step in `unread` over all ranks: one read from the device and, with
    several ranks, one collective for all of them."""
    sums = world.sum(torch.stack([loss for loss, _ in unread]).tolist(), device)
    return [total / supervised for total, (_, supervised) in zip(sums, unread)]


def describe_shares(shares: dict[str, float], weights: dict[str, float]) -> str:
    """Each task's share of the samples trained beside its weight, one line."""
    return "share of samples (weight): " + ", ".join(
        f"{task} {share:.1%} ({weights[task]:.1%})" for task, share in shares.items())


def _log(window: dict[str, Any], step: int, peak: float | None, shares: dict[str, float],
         path: str | None, bar) -> dict[str, Any]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - window["started"]
    metrics = {
        "step": step,
        "loss": sum(window["losses"]) / len(window["losses"]),
        "lr": window["lr"],
        "tokens_per_s": window["tokens"] / elapsed,  # all ranks together
        "samples_per_s": window["samples"] / elapsed,
        "data_wait": window["wait"] / elapsed,
        # held by checkpoints: their copy (in the background) or their writing
        "checkpoint_wait": window["saving"] / elapsed,
        "sample_shares": shares,  # since the stage began, all ranks together
    }
    if peak:
        metrics["mfu"] = window["flops"] / elapsed / peak
    window.update(tokens=0, samples=0, flops=0.0, wait=0.0, saving=0.0,
                  started=time.perf_counter(), losses=[])
    if path is None:
        return metrics
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(metrics) + "\n")
    line = (f"step {step}: loss {metrics['loss']:.4f}, lr {metrics['lr']:.2e}, "
            f"{metrics['tokens_per_s']:,.0f} tokens/s, data wait {metrics['data_wait']:.1%}, "
            f"checkpoint wait {metrics['checkpoint_wait']:.1%}")
    if peak:
        line += f", MFU {metrics['mfu']:.1%}"
    bar.write(line) if not bar.disable else print(line, flush=True)
    return metrics
