"""Hybrid sharding (`fsdp_shard_size`): the bytes a training step sends through collectives that
cross nodes, each copy of the model sharded over a node beside one copy sharded over all ranks,
in two runs of the same script on the same machine.

    python benchmarks/bench_hybrid.py                 # 4 CPU ranks as 2 "nodes" of 2, 0.3 B
    python benchmarks/bench_hybrid.py --ranks 16 --node-size 8 --device cuda --hidden 2048 \
        --llm-layers 24
    python benchmarks/bench_hybrid.py --tiny          # the same code in seconds
    python benchmarks/bench_hybrid.py --whole         # gradients accumulated whole

Ranks r and s are on one node when r // node-size == s // node-size (torchrun's order). Each
rank builds the model on the meta device, shards it with the trainer's plan either way, then
takes one optimizer step of `--accumulation` micro-batches as the trainer does (gradients
reduce-scattered at each, all-reduced across the copies on the last; with `--whole`, as with
`fsdp_accumulation: whole`, both on the last). FSDP2's all-gathers, reduce-scatters and
all-reduces are counted by the bytes of the larger of their buffers and by whether their group
spans nodes; the output prints rank 0's, per step. On a CPU the count is the measure (gloo over
loopback has no slow link); on a cluster the bytes that cross nodes go over the network instead
of NVLink.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_checkpoint import add_model_arguments, model_overrides, run_both_ways  # noqa: E402
from bench_frozen import count_collectives, synthetic_rows  # noqa: E402

def rank_main(args) -> None:
    import torch

    from corpus.tokens import TextTokenizer
    from trainer.distributed import join_world
    from trainer.stages import stage_config
    from trainer.train import build_model, param_groups
    from trainer.weights import InitialWeights

    world = join_world()
    device = world.device(args.device)
    bf16 = device.type == "cuda"
    shard_size = args.node_size if args.hybrid else None
    config = stage_config(2, overrides=dict(model_overrides(args), distributed="fsdp",
                                            fsdp_shard_size=shard_size))
    image_size = 56 if args.tiny else args.image_size
    model = build_model(config.model, image_size, TextTokenizer.default())
    model.encode_always = True  # as the trainer sets it under FSDP
    world.wrap(model, InitialWeights(model, 0), device, "fsdp", bf16,
               mesh_shape=config.fsdp_mesh(world.size))
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=1e-5)
    batch = synthetic_rows(model, 1, args.text_tokens, image_size, device)
    counts = count_collectives(args.node_size)
    for index in range(args.accumulation):
        with world.no_sync(model, index == args.accumulation - 1,
                           "whole" if args.whole else "sharded"):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(*batch)
            loss.backward()
    optimizer.step()
    if world.main:
        with open(args.result, "w", encoding="utf-8") as f:
            json.dump({"counts": counts, "ranks": world.size, "device": str(device),
                       "parameters": sum(p.numel() for p in model.parameters())}, f)
    world.finish()


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.set_defaults(ranks=4, hidden=512, llm_layers=4)  # four ranks in a small memory
    parser.add_argument("--node-size", type=int, default=2, help="ranks a node holds")
    parser.add_argument("--accumulation", type=int, default=4, help="micro-batches a step")
    parser.add_argument("--whole", action="store_true",
                        help="gradients accumulated whole, reduced on the last micro-batch")
    parser.add_argument("--image-size", type=int, default=56, help="pixels")
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens a row")
    parser.add_argument("--hybrid", type=lambda text: text == "True", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_main:
        return rank_main(args)
    if args.ranks % args.node_size or args.ranks == args.node_size:
        parser.error("--ranks must be a multiple of --node-size, on two nodes or more")
    ways = run_both_ways(__file__, args.ranks, "--hybrid", argv)
    results = {"a copy per node": ways[True], "one copy over all": ways[False]}
    first = next(iter(results.values()))
    print(f"{first['ranks']} x {first['device']} as {first['ranks'] // args.node_size} nodes of "
          f"{args.node_size}, stage 2, {first['parameters'] / 1e9:.2f} B parameters, a step of "
          f"{args.accumulation} micro-batches, gradients accumulated "
          f"{'whole' if args.whole else 'sharded'}; rank 0's bytes through collectives:")
    for name, result in results.items():
        print(f"{name:>18}: " + ", ".join(f"{key} {value / 2 ** 20:,.1f} MiB"
                                          for key, value in sorted(result["counts"].items())))
    across = {name: sum(v for k, v in r["counts"].items() if "across" in k)
              for name, r in results.items()}
    print(f"across nodes, one copy over all / a copy per node: "
          f"{across['one copy over all'] / max(across['a copy per node'], 1):.1f}x")
    return results


if __name__ == "__main__":
    main()
