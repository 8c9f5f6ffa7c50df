"""A frozen component under FSDP: held whole on every rank, as the trainer does
(`replicate_frozen: true`), beside sharded and gathered at every pass, in two runs of the same
script on the same machine.

    python benchmarks/bench_frozen.py                        # 2 CPU ranks, stage 1, a 0.5 B model
    python benchmarks/bench_frozen.py --ranks 8 --device cuda --llm-layers 24
    python benchmarks/bench_frozen.py --tiny                 # the same code in seconds

Stage 1 freezes the LLM (Table 8). Each rank builds the model on the meta device, shards it with
the trainer's plan (trainer/distributed.py) either way, then runs forward and backward passes
on synthetic rows with one image each. It prints, per way, the bytes FSDP's all-gathers brought
rank 0 per pass, the seconds per pass (median) and the resident memory each rank held after
start-up. On a CPU the passes are mostly compute and the gathers go over loopback TCP; on GPUs
the gathers cross NVLink or the network, which is where sparing them counts.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_checkpoint import (add_model_arguments, model_overrides,  # noqa: E402
                              resident_bytes, run_both_ways)


def synthetic_rows(model, rows: int, text_tokens: int, image_size: int, device):
    """Rows of one image (its query slots first) and `text_tokens` supervised tokens."""
    import torch

    from trainer.data import IGNORE, PackedLayout

    queries = model.image_tokens
    generator = torch.Generator().manual_seed(0)
    vocab, pad = model.llm.get_input_embeddings().num_embeddings, model.image_pad_id
    ids = torch.randint(64, vocab, (rows, queries + text_tokens), generator=generator)
    ids[ids == pad] = 64 if pad != 64 else 65  # image slots only where the image goes
    ids[:, :queries] = pad
    positions = torch.arange(queries + text_tokens).expand(rows, -1).contiguous()
    targets = ids.roll(-1, dims=1)
    targets[:, :queries] = IGNORE
    layout = PackedLayout.of(ids, positions, model.image_pad_id, targets)
    pixels = torch.randint(0, 256, (rows, image_size, image_size, 3), dtype=torch.uint8,
                           generator=generator)
    return [t.to(device) for t in (ids, positions, targets, pixels)] + [layout.to(device)]


def count_collectives(node_size: int) -> dict[str, int]:
    """Wraps FSDP2's collectives to add up their bytes: {kind across/within nodes: bytes}, ranks
    r and s on one node when r // node_size == s // node_size (every group within one node when
    node_size is the world's)."""
    import torch.distributed as dist

    from trainer.distributed import FSDP_COLLECTIVES

    counts: dict[str, int] = {}

    def count(kind: str, buffer: str):  # wraps the collective in torch.distributed
        name = FSDP_COLLECTIVES.get(kind, kind)
        collective = getattr(dist, name)

        def run(*args, **kwargs):
            tensor = kwargs[buffer] if buffer in kwargs else args[0]
            ranks = dist.get_process_group_ranks(kwargs.get("group") or dist.group.WORLD)
            where = "across" if len({rank // node_size for rank in ranks}) > 1 else "within"
            key = f"{kind} {where} nodes"
            counts[key] = counts.get(key, 0) + tensor.numel() * tensor.element_size()
            return collective(*args, **kwargs)

        setattr(dist, name, run)

    for kind, buffer in (("all_gather", "output"), ("reduce_scatter", "input"),
                         ("all_reduce", "tensor")):
        count(kind, buffer)
    return counts


def rank_main(args) -> None:
    import torch

    from corpus.tokens import TextTokenizer
    from trainer.distributed import join_world, replicated_parameters
    from trainer.model import apply_freeze_plan
    from trainer.stages import stage_config
    from trainer.train import build_model
    from trainer.weights import InitialWeights

    world = join_world()
    device = world.device(args.device)
    bf16 = device.type == "cuda"
    config = stage_config(1, overrides=dict(model_overrides(args), distributed="fsdp"))
    image_size = 56 if args.tiny else args.image_size
    before = resident_bytes()
    model = build_model(config.model, image_size, TextTokenizer.default())
    apply_freeze_plan(model, config.trainable)
    world.wrap(model, InitialWeights(model, 0), device, "fsdp", bf16, args.replicate)
    held = world.gather((resident_bytes() - before) / 2 ** 30)
    whole = sum(p.numel() * p.element_size() for _, p in replicated_parameters(model))
    batch = synthetic_rows(model, args.rows, args.text_tokens, image_size, device)

    counts = count_collectives(node_size=world.size)
    seconds = []
    for index in range(args.warmup + args.passes):
        if index == args.warmup:
            counts.clear()
        world.barrier()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(*batch)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= args.warmup:
            seconds.append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
    if world.main:
        with open(args.result, "w", encoding="utf-8") as f:
            gathered = counts.get("all_gather within nodes", 0)
            json.dump({"gathered_per_pass": gathered / args.passes, "held_whole": whole,
                       "seconds": statistics.median(seconds), "held_gib": held,
                       "parameters": sum(p.numel() for p in model.parameters()),
                       "ranks": world.size, "device": str(device)}, f)
    world.finish()


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--image-size", type=int, default=56, help="pixels (stage 1: 224)")
    parser.add_argument("--rows", type=int, default=2, help="rows per pass, per rank")
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens per row")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--replicate", type=lambda text: text == "True", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_main:
        return rank_main(args)
    ways = run_both_ways(__file__, args.ranks, "--replicate", argv)
    results = {"held whole": ways[True], "sharded": ways[False]}
    whole, sharded = results["held whole"], results["sharded"]
    print(f"{whole['ranks']} x {whole['device']}, stage 1, {whole['parameters'] / 1e9:.2f} B "
          f"parameters, the frozen LLM {whole['held_whole'] / 2 ** 30:.2f} GiB whole")
    for name, result in results.items():
        print(f"{name:>10}: {result['gathered_per_pass'] / 2 ** 30:.3f} GiB gathered a pass, "
              f"{result['seconds']:.2f} s a pass; held after start-up: " + ", ".join(
                  f"rank {rank} {gib:.2f} GiB" for rank, gib in enumerate(result["held_gib"])))
    print(f"gathered, sharded / held whole: "
          f"{sharded['gathered_per_pass'] / max(whole['gathered_per_pass'], 1):.1f}x; "
          f"seconds a pass, sharded / held whole: {sharded['seconds'] / whole['seconds']:.2f}")
    return results


if __name__ == "__main__":
    main()
