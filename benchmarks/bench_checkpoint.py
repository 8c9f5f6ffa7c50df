"""Checkpoint saves under FSDP: every rank writing its own part, as the trainer does, beside
gathering the full model and AdamW state to rank 0 and writing them there (what the trainer did
before), and the part written in the background, side by side in one run.

    python benchmarks/bench_checkpoint.py                    # 2 CPU ranks, a 0.44 B model
    python benchmarks/bench_checkpoint.py --ranks 8 --device cuda --llm-layers 24
    python benchmarks/bench_checkpoint.py --tiny             # the same code in seconds
    python benchmarks/bench_checkpoint.py --ddp --hidden 512 --llm-layers 4  # DDP's share-out

It starts itself under torchrun. Each rank builds the model on the meta device and shards it
with the trainer's FSDP plan (trainer/distributed.py), gives every parameter an AdamW state
(one step), then saves each way into a temporary folder. For each way and each rank it prints
the seconds until the save is on disk and the peak of the process's resident memory over it,
above what it held before (sampled every 5 ms); and the seconds a save in the background holds
the training loop at most (the copy to host memory, which the next step's passes overlap) beside
writing before it goes on. Then it reads the weights back as a resume does, each rank the
parts its slices need, beside reading every tensor whole: seconds and bytes read per rank.
The ranks must share the folder's disk, as a run's ranks share its output folder.

With `--ddp` the ranks hold the model whole (DDP) instead, and it prints only what a save in the
background copies to host memory on each: the whole state, as each rank did before, beside its
share of it (trainer.checkpoint.this_copys_share), in seconds and host memory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAGE = os.sysconf("SC_PAGE_SIZE")


def bytes_read() -> int:
    """What the process has asked to read so far (from the disk or the page cache)."""
    with open("/proc/self/io", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE


class PeakMemory:
    """The highest resident memory seen while the block runs, above that at its start."""

    def __enter__(self):
        self.start = resident_bytes()
        self.peak = self.start
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, resident_bytes())
        self.extra_gib = (self.peak - self.start) / 2 ** 30


def model_overrides(args) -> dict:
    if args.tiny:
        return {"model": {"visual": {"width": 64, "layers": 2, "head_width": 32},
                          "adapter": {"queries": 16},
                          "llm": {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2,
                                  "intermediate_size": 128}}}
    return {"model": {
        "visual": {"width": 768, "layers": 12, "head_width": 64},
        "adapter": {"queries": 64},
        "llm": {"hidden_size": args.hidden, "layers": args.llm_layers, "heads": 16,
                "kv_heads": 4, "intermediate_size": args.hidden * 11 // 4,
                "vocab_size": 151936}}}


def trained_state(args, world, device, strategy: str):
    """The model (`model_overrides`), built on the meta device and filled by `strategy` as
    the trainer does, with an AdamW state for every parameter (one step), its scheduler and
    tokenizer."""
    import torch

    from corpus.tokens import TextTokenizer
    from trainer.stages import stage_config
    from trainer.train import build_model, param_groups
    from trainer.weights import InitialWeights

    config = stage_config(2, overrides=dict(model_overrides(args), distributed=strategy))
    tokenizer = TextTokenizer.default()
    model = build_model(config.model, 56 if args.tiny else 224, tokenizer)
    world.wrap(model, InitialWeights(model, 0), device, strategy)
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for param in model.parameters():  # every parameter gets its AdamW moments
        param.grad = torch.ones_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer, scheduler, tokenizer


def gathered_save(model, optimizer, folder: str, world) -> None:
    """The full state dicts on the CPU of rank 0, written there."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optimizer_state = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if world.main:
        os.makedirs(folder)
        torch.save(model_state, os.path.join(folder, "model.pt"))
        torch.save(optimizer_state, os.path.join(folder, "optimizer.pt"))
    del model_state, optimizer_state
    world.barrier()


def rank_main(args) -> None:
    from trainer.checkpoint import CheckpointWriter, load_model
    from trainer.distributed import join_world
    from trainer.weights import read_weights

    world = join_world()
    device = world.device(args.device)
    if args.ddp:
        return shared_copies(args, world, device)
    model, optimizer, scheduler, tokenizer = trained_state(args, world, device, "fsdp")
    parameters = sum(p.numel() for p in model.parameters())  # the global count: DTensor shapes
    # on the rank's device, as the trainer's: on CUDA the copy goes to pinned memory
    writers = {background: CheckpointWriter(os.path.join(args.folder, folder), 1, world,
                                            background, device)
               for background, folder in ((False, "sharded"), (True, "behind"))}

    def held_by_save(step: int) -> float:
        """The most seconds the loop waits: until the copy is made, with no pass to overlap it
        (the loop waits before its next optimizer step)."""
        started = time.perf_counter()
        writers[True].save(step, model, optimizer, scheduler, tokenizer, {})
        writers[True].wait_for_copy()
        return time.perf_counter() - started

    with PeakMemory() as buffers:
        first_held = held_by_save(1)  # makes the host buffers, which later saves reuse
        writers[True].wait()
    saves = {
        "own part": lambda: writers[False].save(1, model, optimizer, scheduler, tokenizer, {}),
        "gathered": lambda: gathered_save(model, optimizer,
                                          os.path.join(args.folder, "gathered"), world),
        "behind": lambda: held_by_save(2),
    }
    results, returned = {}, {}
    for name, save in saves.items():
        world.barrier()
        with PeakMemory() as memory:
            started = time.perf_counter()
            returned[name] = save()
            writers[True].wait()
            seconds = time.perf_counter() - started
        results[name] = world.gather((seconds, memory.extra_gib))
    held = world.gather((first_held, returned["behind"], buffers.extra_gib))
    for writer in writers.values():
        writer.close()  # frees the host buffers
    steps = world.gather(steps_after_saves(model, optimizer, scheduler, tokenizer, world,
                                           device, args))
    # a resume: the weights into the sharded model, each rank reading what its slices need,
    # beside reading every tensor whole (as filling a model unit by unit from it does)
    saved = os.path.join(args.folder, "sharded", "checkpoints", "step-00000001")
    loads = {
        "own part": lambda: load_model(model, saved, world),
        "whole": lambda: read_weights(saved),
    }
    reads = {}
    for name, load in loads.items():
        world.barrier()
        before, started = bytes_read(), time.perf_counter()
        load()
        reads[name] = world.gather((time.perf_counter() - started,
                                    (bytes_read() - before) / 2 ** 30))
    if world.main:
        print(f"{world.size} x {device}, {parameters / 1e9:.2f} B parameters "
              f"({parameters * 12 / 2 ** 30:.1f} GiB of fp32 weights and AdamW moments)")
        for name, per_rank in results.items():
            print(f"{name:>9}: " + "; ".join(
                f"rank {rank} {seconds:.1f} s, +{gib:.2f} GiB"
                for rank, (seconds, gib) in enumerate(per_rank)))
        own, gathered = results["own part"][0], results["gathered"][0]
        print(f"rank 0, gathered vs own part: +{gathered[1]:.2f} vs +{own[1]:.2f} GiB at the "
              f"peak, {gathered[0] / own[0]:.1f}x the seconds")
        print("the loop held by a save of its own part, at most: in the background (until the "
              "copy to host memory is made, with no pass to overlap it; written by a thread), a "
              "first save then a later one, vs written before it goes on: " + "; ".join(
                  f"rank {rank} {first:.2f} then {later:.2f} vs {written[0]:.1f} s "
                  f"({written[0] / later:.0f}x; its host buffers +{gib:.2f} GiB)"
                  for rank, ((first, later, gib), written) in enumerate(zip(
                      held, results["own part"]))))
        plain = sum(per_rank["no save"] for per_rank in steps) / len(steps)
        print(f"a training step ({args.tokens} tokens) with a save, its seconds beyond a step "
              f"without one ({plain:.1f} s), mean over the ranks:")
        for name in ("written before the step", "in the background, a run's first",
                     "in the background, a later one"):
            extra = sum(per_rank[name] for per_rank in steps) / len(steps) - plain
            print(f"  {name}: {extra:+.1f} s")
        print(f"reading the weights back ({parameters * 4 / 2 ** 30:.2f} GiB):")
        for name, per_rank in reads.items():
            print(f"{name:>9}: " + "; ".join(
                f"rank {rank} {seconds:.1f} s, {gib:.2f} GiB read"
                for rank, (seconds, gib) in enumerate(per_rank)))
    world.finish()


def steps_after_saves(model, optimizer, scheduler, tokenizer, world, device, args) -> dict:
    """The seconds of a training step (text rows: FSDP still runs the ViT on a blank image)
    without a save, and with a save taken at its start: written before the step goes on, and
    behind it (the copy overlapping the step's passes; the first save of a run makes its host
    buffers, a later one reuses them). The writing after the step is not timed."""
    import torch

    from trainer.checkpoint import CheckpointWriter

    model.encode_always = True  # as the trainer sets it under FSDP
    ids = torch.randint(64, 1000, (1, args.tokens))
    ids[ids == model.image_pad_id] = 64  # text only: an image slot would want an image
    ids = ids.to(device)
    positions = torch.arange(args.tokens, device=device).unsqueeze(0)
    behind = CheckpointWriter(os.path.join(args.folder, "loop-behind"), 1, world, True, device)
    held = CheckpointWriter(os.path.join(args.folder, "loop-held"), 1, world, False, device)

    def step(writer=None, number=0) -> float:
        world.barrier()
        started = time.perf_counter()
        if writer is not None:
            writer.save(number, model, optimizer, scheduler, tokenizer, {})
        model(ids, positions, ids).backward()
        if writer is not None:
            writer.wait_for_copy()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        if writer is not None:
            writer.wait()
        return seconds

    step()  # warm-up
    timed = {"no save": step(), "written before the step": step(held, 1),
            "in the background, a run's first": step(behind, 1),
            "in the background, a later one": step(behind, 2)}
    behind.close()
    return timed


def shared_copies(args, world, device) -> None:
    """DDP ranks, each holding the whole state: what a save in the background copies to host
    memory on each, the whole state (as before) beside this rank's share of it (as the trainer
    does): the copy's seconds and the host memory its buffers take."""
    from trainer.checkpoint import CheckpointWriter
    from trainer.distributed import state_copies

    model, optimizer, scheduler, tokenizer = trained_state(args, world, device, "ddp")
    parameters = sum(p.numel() for p in model.parameters())
    ways = {"whole": (1, 0), "share": state_copies(world, None)}
    results = {}
    for name, copies in ways.items():
        writer = CheckpointWriter(os.path.join(args.folder, name), 1, world, True, device, copies)
        world.barrier()
        with PeakMemory() as buffers:
            started = time.perf_counter()
            writer.save(1, model, optimizer, scheduler, tokenizer, {})
            writer.wait_for_copy()
            copied = time.perf_counter() - started
            writer.wait()
        writer.close()
        results[name] = world.gather((copied, buffers.extra_gib))
    if world.main:
        print(f"{world.size} x {device} DDP, {parameters / 1e9:.2f} B parameters "
              f"({parameters * 12 / 2 ** 30:.1f} GiB of fp32 weights and AdamW moments on "
              f"each rank); a save in the background, its copy to host memory on each rank:")
        for rank, (whole, share) in enumerate(zip(results["whole"], results["share"])):
            print(f"  rank {rank}: the whole state {whole[0]:.2f} s, +{whole[1]:.2f} GiB; its "
                  f"share {share[0]:.2f} s, +{share[1]:.2f} GiB "
                  f"({whole[1] / max(share[1], 1e-3):.1f}x "
                  f"less host memory)")
    world.finish()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The ranks, the device and the model's size (`model_overrides`), and the flag its ranks
    are started with (`run_ranks`)."""
    parser.add_argument("--ranks", type=int, default=2, help="processes (GPUs with --device cuda)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--hidden", type=int, default=1024, help="the LLM's width")
    parser.add_argument("--llm-layers", type=int, default=8, help="the LLM's decoder layers")
    parser.add_argument("--tiny", action="store_true",
                        help="a 0.4 M-parameter model: keeps the script working, measures nothing")
    parser.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)


def run_ranks(script: str, ranks: int, arguments: list[str]) -> None:
    """`script --rank-main ARGUMENTS` as `ranks` processes under torchrun, one thread each
    unless OMP_NUM_THREADS says otherwise."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(ranks), os.path.abspath(script), "--rank-main", *arguments]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    subprocess.run(command, check=True, env=env)


def run_both_ways(script: str, ranks: int, flag: str, argv: list[str] | None) -> dict:
    """`script`'s ranks run twice, `flag True` then `flag False` added to `argv` (the command
    line's when None); what rank 0 wrote to `--result` each time, by the flag's value."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for way in (True, False):
            result = os.path.join(folder, f"{way}.json")
            run_ranks(script, ranks, [flag, str(way), "--result", result,
                                      *(argv if argv is not None else sys.argv[1:])])
            with open(result, encoding="utf-8") as f:
                results[way] = json.load(f)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--folder", help="where to write (default: a temporary folder)")
    parser.add_argument("--tokens", type=int, default=64,
                        help="tokens of the training steps timed around a save")
    parser.add_argument("--ddp", action="store_true",
                        help="only DDP ranks' background copy: the whole state vs each one's "
                             "share")
    args = parser.parse_args(argv)
    if args.rank_main:
        return rank_main(args)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        run_ranks(__file__, args.ranks, [
            "--device", args.device, "--hidden", str(args.hidden),
            "--llm-layers", str(args.llm_layers), "--folder", folder,
            "--tokens", str(args.tokens),
            *(["--tiny"] if args.tiny else []), *(["--ddp"] if args.ddp else [])])


if __name__ == "__main__":
    main()
