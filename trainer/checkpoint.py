"""Checkpoints: written by every rank, each its own part; read back by any number of ranks.

A checkpoint is a folder `OUTPUT/checkpoints/step-NNNNNNNN/` holding `model/` and `optimizer/`
(`torch.distributed.checkpoint` folders: a `.metadata` index and one `__RANK_0.distcp` file per
rank that wrote), `tokenizer.json` and `state.json` (step, scheduler, data position, resolved
config, counters). Under FSDP each rank writes the slices it holds, so no rank ever gathers the
model or its AdamW state (for the 9.6 B model, 115 GB that rank 0 alone would hold in host memory
at every save); ranks holding the same state (DDP's replicas, hybrid sharding's copies) share
it out, each copying and writing some of its tensors (`this_copys_share`). The state
dicts have the layout of `torch.distributed.checkpoint.state_dict` (parameter names; optimizer
state keyed by them), so a checkpoint written by one process, DDP or FSDP, on any number of
ranks, is read by any of them: a resumed run reads into its sharded model and optimizer the
parts of the files its own slices need (resharded on load), and a new stage reads the weights
one whole tensor at a time as each part of the model is filled (trainer/weights.py).

The folder is written under a temporary name and renamed into place, then `checkpoints/latest`
names it, so a reader never sees a half-written checkpoint. A run writes it in the background
(`CheckpointWriter`): the training waits for a copy in host memory, not for the disk. The
ranks must share the file system the output folder is on. Checkpoints of the earlier layout
(`model.pt`, `optimizer.pt`: full state dicts) are still read. `corpus export` writes a
checkpoint's weights as one safetensors file.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.tensor import DTensor

from corpus.shards import atomic_write
from corpus.tokens import TextTokenizer

if TYPE_CHECKING:  # trainer.distributed needs trainer.weights, which needs this module
    from trainer.distributed import World


# Without a process group `torch.distributed.checkpoint` warns at each call that it assumes one
# process: here that is what is meant. Set for the process: the filters are global, and a
# context that sets and restores them is not safe beside the thread that writes checkpoints
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


class IndexedOnce(FileSystemReader):
    """A checkpoint folder's reader that reads its index (`.metadata`) once. Each load reads
    it, and the index grows with the tensors and the ranks that wrote them: reading tensor by
    tensor through a plain reader spent 9 ms a tensor on the index alone for 400 tensors, its
    time growing with the square of the model's tensors."""

    def read_metadata(self):
        if not hasattr(self, "index"):
            self.index = super().read_metadata()
        return self.index


def between(world: World) -> dict[str, Any]:
    """How the ranks agree on what each writes or reads: over their checkpoint group (gloo:
    nothing waits for the GPU, nothing meets the loop's collectives), or not at all for a
    process on its own."""
    return {"process_group": world.checkpoint_group, "no_dist": not world.grouped}


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder, or a training output folder (its latest checkpoint)."""
    if os.path.exists(os.path.join(path, "state.json")):
        return path
    latest = os.path.join(path, "checkpoints", "latest")
    if os.path.exists(latest):
        with open(latest, encoding="utf-8") as f:
            return os.path.join(path, "checkpoints", f.read().strip())
    raise FileNotFoundError(f"{path}: no checkpoint (no state.json, no checkpoints/latest)")


def read_state(checkpoint: str) -> dict[str, Any]:
    with open(os.path.join(checkpoint, "state.json"), encoding="utf-8") as f:
        return json.load(f)


def pinned_empty_like(tensor: torch.Tensor) -> torch.Tensor:
    """A host tensor like `tensor`, pinned where it lies, at its own size: torch's pinned
    allocator rounds each request up to a power of two, up to twice the host memory held."""
    buffer = torch.empty_like(tensor, device="cpu")
    if buffer.numel():
        cudart = torch.cuda.cudart()
        address, size = buffer.data_ptr(), buffer.untyped_storage().nbytes()
        failed = int(cudart.cudaHostRegister(address, size, 1))
        if failed:
            raise RuntimeError(f"cudaHostRegister of {size} bytes failed: {failed}")
        # unpinned with the buffer, not at exit: CUDA may be gone by then
        weakref.finalize(buffer, cudart.cudaHostUnregister, address).atexit = False
    return buffer


class HostStager:
    """Copies of a state dict in host memory, made into buffers kept from one save to the next
    (pinned where the state is on a GPU: pinning gigabytes at every save would cost seconds).
    Containers are copied (the scheduler changes the optimizer's groups in place), tensors into
    their buffers, and a DTensor's local slice into its buffer, under the same layout, so that
    `torch.distributed.checkpoint` writes it as the slice it is. Each copy waits for the current
    stream only. (torch's `DefaultStager` does this too, but in some releases, 2.11 among them,
    it can stage once only: it drops its copy table after each stage.)"""

    def __init__(self, pinned: bool):
        self.pinned = pinned
        self.buffers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return self._copy(state_dict, "")

    def _copy(self, state: Any, key: str) -> Any:
        if isinstance(state, DTensor):  # taken apart and put together by the subclass protocol
            names, layout = state.__tensor_flatten__()
            inner = {name: self._copy(getattr(state, name), f"{key}/{name}") for name in names}
            return DTensor.__tensor_unflatten__(inner, layout, state.shape, state.stride())
        if isinstance(state, torch.Tensor):
            buffer = self.buffers.get(key)
            if buffer is None or buffer.shape != state.shape or buffer.dtype != state.dtype:
                buffer = self.buffers[key] = (pinned_empty_like(state) if self.pinned
                                              else torch.empty_like(state, device="cpu"))
            # a blocking copy waits for the current stream alone (the copy stream, on CUDA)
            return buffer.copy_(state)
        if isinstance(state, dict):
            return {name: self._copy(value, f"{key}/{name}") for name, value in state.items()}
        if isinstance(state, list | tuple):
            return type(state)(self._copy(value, f"{key}/{index}")
                               for index, value in enumerate(state))
        return state  # numbers and strings: nothing changes them in place

    def close(self) -> None:
        self.buffers.clear()


class CheckpointWriter:
    """A run's checkpoints, every rank writing its part; behind the training when `background`.

    A save hands this rank's part of the model and optimizer state to a thread and returns. The
    thread copies what the steps change (the trained weights, the optimizer state) to host
    memory, then writes, puts the folder in place and removes the oldest while the next steps
    train. The loop waits only before its next optimizer step, which changes the weights in
    place, and only until the copy is made (`wait_for_copy`); the forward and backward passes
    before it overlap the copy, and nothing waits for the disk. On CUDA the copy runs on a
    stream of its own, beside the passes (on the passes' stream it would hold them up), once
    the GPU has done the steps before the save, into pinned buffers the next save reuses; it
    waits for that stream alone, not for the passes. One save is written at a time: a save, and
    `wait`, first let the previous one finish, and raise its failure if it failed. The writing
    threads of the ranks agree over a group of their own (`World.checkpoint_group`), apart from
    the loop's collectives. A save is in place once `wait` returns, on every rank."""

    def __init__(self, output_dir: str, keep: int, world: World, background: bool = True,
                 device: torch.device = torch.device("cpu"), copies: tuple[int, int] = (1, 0)):
        """`copies`: how many ranks hold each slice of the state and which of them this rank is
        (`trainer.distributed.state_copies`). Each copy copies and writes its share of the
        tensors only: under DDP on 8 GPUs a rank stages 1/8 of the state, not all of it."""
        self.root = os.path.join(output_dir, "checkpoints")
        self.copies = copies
        on_cuda = device.type == "cuda"
        if on_cuda and device.index is None:  # "cuda" is this rank's GPU here, GPU 0 in a thread
            device = torch.device("cuda", torch.cuda.current_device())
        self.keep, self.world, self.background, self.device = keep, world, background, device
        if world.main and os.path.isdir(self.root):  # what a stopped run left half-written
            for name in os.listdir(self.root):
                if name.startswith(".step-") and name.endswith(".tmp"):
                    shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        self.stager = HostStager(pinned=on_cuda)
        self.copy_stream = torch.cuda.Stream(device) if on_cuda else None
        self.writing: threading.Thread | None = None
        self.copied = threading.Event()
        self.copied.set()
        self.failure: BaseException | None = None

    def save(self, step: int, model: nn.Module, optimizer, scheduler, tokenizer: TextTokenizer,
             state: dict[str, Any]) -> str:
        """Every rank calls it; returns the checkpoint's folder (in place after `wait`)."""
        self.wait()
        name = f"step-{step:08d}"
        parts = this_copys_share({"model": get_model_state_dict(model),
                                  "optimizer": get_optimizer_state_dict(model, optimizer)},
                                 *self.copies)
        # what the loop changes next (the counters, the scheduler) is written out now
        state_text = json.dumps(dict(state, step=step, scheduler=scheduler.state_dict()),
                                indent=1, sort_keys=True)
        if not self.background:
            self._write(name, parts, tokenizer, state_text)
            return os.path.join(self.root, name)
        # frozen weights, which no step changes, are written from the model itself, not copied
        # (Table 8's frozen LLM of stage 1, held whole on each GPU, would be 15 GB more a GPU)
        frozen = {key for key, param in model.named_parameters() if not param.requires_grad}
        # the copy begins once the GPU has done what the loop queued before the save
        saved_at = (torch.cuda.current_stream(self.device).record_event()
                    if self.copy_stream is not None else None)
        self.copied.clear()
        self.writing = threading.Thread(
            target=self._write_behind,
            args=(name, parts, frozen, tokenizer, state_text, saved_at),
            daemon=True, name=f"checkpoint {name}")
        self.writing.start()
        return os.path.join(self.root, name)

    def wait_for_copy(self) -> None:
        """Before the loop changes the weights (its optimizer step): until the save being written
        has copied them."""
        self.copied.wait()

    def wait(self) -> None:
        """Until the save being written is in place; its failure, if it failed."""
        if self.writing is not None:
            self.writing.join()
            self.writing = None
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise RuntimeError(f"writing a checkpoint under {self.root} failed") from failure

    def close(self) -> None:
        self.wait()
        self.stager.close()

    def _write_behind(self, name: str, parts: dict[str, Any], frozen: set[str],
                      tokenizer: TextTokenizer, state_text: str,
                      saved_at: torch.cuda.Event | None) -> None:
        try:
            try:
                if self.copy_stream is not None:  # a thread starts on GPU 0, whatever its rank's
                    torch.cuda.set_device(self.device)
                    self.copy_stream.wait_event(saved_at)
                weights = parts["model"]
                changing = {key: value for key, value in weights.items() if key not in frozen}
                with torch.cuda.stream(self.copy_stream):  # no stream: as it is, on the CPU
                    parts = self.stager.stage(dict(parts, model=changing))
                parts["model"].update((key, weights[key]) for key in frozen if key in weights)
            finally:  # the loop goes on, a failed copy included (raised at `wait`)
                self.copied.set()
            self._write(name, parts, tokenizer, state_text)
        except BaseException as failure:  # raised in the loop, at the next save or the end
            self.failure = failure

    def _write(self, name: str, parts: dict[str, Any], tokenizer: TextTokenizer,
               state_text: str) -> None:
        world = self.world
        final, tmp = os.path.join(self.root, name), os.path.join(self.root, f".{name}.tmp")
        if world.main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        world.checkpoint_barrier()
        for part, state_dict in parts.items():
            dcp.save(state_dict, checkpoint_id=os.path.join(tmp, part), **between(world))
        if world.main:  # the planners have gathered every rank's writes: all parts are on disk
            tokenizer.save(os.path.join(tmp, "tokenizer.json"))
            with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
                f.write(state_text)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            with atomic_write(os.path.join(self.root, "latest")) as f:
                f.write(name.encode())
            kept = sorted(d for d in os.listdir(self.root) if d.startswith("step-"))
            for old in kept[:-max(1, self.keep)]:
                shutil.rmtree(os.path.join(self.root, old))
        world.checkpoint_barrier()


def this_copys_share(parts: dict[str, Any], copies: int, copy: int) -> dict[str, Any]:
    """Of a state held alike by `copies` ranks, the part copy `copy` writes: the weights and the
    optimizer state of some of the parameters, shared out by size (each whole, largest first,
    to the copy with the least so far), so each copy stages about 1/copies of the bytes.
    Every copy computes the same share-out from the same names and shapes; the checkpoint's
    index, gathered from all the ranks, holds every tensor once. The optimizer's param groups
    (names and settings, no tensors) stay with every copy."""
    if copies == 1:
        return parts
    weights, optimizer = parts["model"], parts["optimizer"]
    sizes = {name: value.numel() if isinstance(value, torch.Tensor) else 0
             for name, value in weights.items()}
    load = [0] * copies
    owner = {}
    for name in sorted(sizes, key=lambda name: (-sizes[name], name)):
        owner[name] = load.index(min(load))
        load[owner[name]] += sizes[name]
    return {"model": {name: value for name, value in weights.items() if owner[name] == copy},
            "optimizer": dict(optimizer, state={
                name: fields for name, fields in optimizer["state"].items()
                if owner.get(name, 0) == copy})}


def load_model(model: nn.Module, checkpoint: str, world: World) -> None:
    """The saved weights into `model` as it is now (sharded or not): each rank reads the parts
    of the files its own slices need, whatever the ranks that wrote them."""
    state = get_model_state_dict(model)
    dcp.load(state, checkpoint_id=os.path.join(checkpoint, "model"), **between(world))
    set_model_state_dict(model, state)


def load_optimizer(model: nn.Module, optimizer, checkpoint: str, world: World) -> None:
    """Restore the saved optimizer state into `optimizer`, whatever the ranks that wrote it and
    however this one is sharded. A parameter no step had given a gradient yet (the ViT after
    text-only micro-batches) has no saved state and starts afresh at its first gradient, as in
    the run that saved it."""
    if not in_parts(checkpoint):
        return load_full_optimizer(model, optimizer, os.path.join(checkpoint, "optimizer.pt"))
    # the layout to load into: every parameter gets a state (from a step with zero gradients)
    fresh = get_optimizer_state_dict(model, optimizer)
    reader = IndexedOnce(os.path.join(checkpoint, "optimizer"))  # read here and by the load
    saved = set(reader.read_metadata().state_dict_metadata)
    state = dict(fresh, state={name: fields for name, fields in fresh["state"].items()
                               if all(f"state.{name}.{field}" in saved for field in fields)})
    dcp.load(state, storage_reader=reader, **between(world))
    # torch before 2.11 wants a state for every trained parameter here: the unsaved ones go
    # through with their fresh state, then lose it
    set_optimizer_state_dict(model, optimizer, dict(state, state=fresh["state"]),
                             options=StateDictOptions(strict=False))
    forget_unsaved(model, optimizer, state["state"])


def load_full_optimizer(model: nn.Module, optimizer, path: str) -> None:
    """The earlier layout: the full optimizer state dict in one file."""
    saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    if any(isinstance(key, int) for key in saved["state"]):  # the id-keyed layout of older runs
        optimizer.load_state_dict(saved)
        return
    set_optimizer_state_dict(model, optimizer, saved,
                             options=StateDictOptions(full_state_dict=True, strict=False))
    forget_unsaved(model, optimizer, saved["state"])


def forget_unsaved(model: nn.Module, optimizer, saved: dict[str, Any]) -> None:
    for name, param in model.named_parameters():
        if name not in saved:
            optimizer.state.pop(param, None)


def in_parts(checkpoint: str) -> bool:
    """Written by this layout (each rank its part), not the earlier one of full files."""
    return os.path.isdir(os.path.join(checkpoint, "model"))


def weights_path(checkpoint: str) -> str:
    """Where a checkpoint holds its model's weights: its `model/` folder, or the `model.pt` of
    the earlier layout (trainer.weights.tensor_readers reads either)."""
    return os.path.join(checkpoint, "model" if in_parts(checkpoint) else "model.pt")
