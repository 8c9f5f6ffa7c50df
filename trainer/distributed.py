"""Several processes under `torchrun`: DDP or FSDP2 over the model, data split by lane.

Each rank reads, packs and decodes the rows of its own data lanes only (trainer/data.py: row k
comes from lane k mod lanes and goes to rank k mod world). Losses are normalised by the
supervised tokens of the whole step across ranks, so N ranks with micro-batch B give the
gradients one rank gives with micro-batch N·B. Rank 0 logs; every rank writes its part of each
checkpoint (trainer/checkpoint.py).

`distributed: fsdp` shards the model with FSDP2 (`fully_shard`): one unit per ViT block and per
decoder layer, one per remaining piece the model calls on its own (see `shard_plan`), then the
root. Each unit's parameters are all of one component, so a freeze plan of Table 8 leaves every
unit wholly trainable or wholly frozen, and a frozen unit is held whole on every rank rather than
sharded (`replicate_frozen`). No rank builds the full model: every rank holds the architecture
on the meta device and fills one unit at a time, sharding it before the next (`shard`), so a
rank's start-up holds at most one unit unsharded beside what it keeps.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from corpus.config import ConfigError
from trainer.weights import InitialWeights, move_buffers

STRATEGIES = ("ddp", "fsdp")
# The `torch.distributed` functions FSDP2 gathers and reduce-scatters with, which a count of
# its traffic wraps. Releases that have the `_single` names gather with them, and keep the
# older names as aliases that call them; older releases have only the older names.
FSDP_COLLECTIVES = ({"all_gather": "all_gather_single", "reduce_scatter": "reduce_scatter_single"}
                    if hasattr(dist, "all_gather_single") else
                    {"all_gather": "all_gather_into_tensor",
                     "reduce_scatter": "reduce_scatter_tensor"})


def shard_plan(model: nn.Module) -> list[nn.Module]:
    """The modules `fully_shard` wraps, innermost first, the root last. FSDP2 gathers a unit's
    parameters in that module's forward, so every module the model calls directly (the
    embeddings and the LM head, which `QwenVL` calls without going through `llm.forward`) is
    a unit of its own."""
    llm = model.llm
    if llm.get_output_embeddings().weight is llm.get_input_embeddings().weight:
        raise ConfigError("distributed: fsdp needs untied input and output embeddings")
    layers = getattr(llm.base_model, "layers", None)
    if layers is None:
        raise ConfigError(f"distributed: fsdp needs the decoder layers at llm.base_model.layers "
                          f"(the Qwen2 layout); {type(llm.base_model).__name__} has none")
    return [*model.visual.transformer.resblocks, model.visual, model.adapter, *layers,
            llm.get_input_embeddings(), llm.get_output_embeddings(), llm.base_model, model]


def forward_ends(model: nn.Module) -> list[nn.Module]:
    """The units the forward pass ends with, which the backward pass begins with: the last
    decoder layer, the final norm (held by `llm.base_model`) and the LM head. FSDP keeps them
    gathered from their forward to their backward rather than freeing them and gathering them
    again at once (for Qwen-7B in bf16, 1.6 GB a micro-batch; the cost is the last layer held
    through the loss, the head and norm being gathered then anyway)."""
    llm = model.llm
    return [llm.base_model.layers[-1], llm.base_model, llm.get_output_embeddings()]


def unit_parameters(plan: list[nn.Module]) -> list[list[tuple[str, nn.Parameter]]]:
    """The parameters each unit of `plan` holds itself (those of no unit inside it)."""
    claimed: set[int] = set()
    units = []
    for module in plan:  # innermost first: a unit's inner units have claimed theirs already
        own = [(name, param) for name, param in module.named_parameters()
               if id(param) not in claimed]
        claimed.update(id(param) for _, param in own)
        units.append(own)
    return units


def check_uniform(plan: list[nn.Module]) -> None:
    """Each unit must be wholly trainable or wholly frozen. FSDP2 accepts a mixed unit (it
    reduce-scatters only the parameters that require gradients), but a uniform one keeps a frozen
    component out of the backward's reductions altogether; Table 8 freezes whole components,
    so the plan is uniform, and this catches a model whose layout would break that."""
    for module, own in zip(plan, unit_parameters(plan)):
        flags = {param.requires_grad for _, param in own}
        if len(flags) > 1:
            frozen = [name for name, param in own if not param.requires_grad]
            raise ConfigError(f"{type(module).__name__}: mixes trainable and frozen parameters "
                             f"(frozen: {frozen[:4]})")


def shard(model: nn.Module, weights: InitialWeights, device: torch.device, bf16: bool,
          replicate_frozen: bool = True, mesh_shape: tuple[int, ...] | None = None,
          reduce_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Shard `model`, built on the meta device, in place: innermost unit first, each rank gives
    the unit's own parameters their initial values (the same on every rank: read from the same
    files, or drawn from generators seeded by name), then keeps its slice of them.

    With `replicate_frozen`, a frozen unit stays whole on every rank instead, in bf16 when the
    run computes in bf16 (what FSDP would gather it in), and out of FSDP: a frozen parameter has
    no gradient or optimizer state to shard, and sharded it would be gathered in every forward
    and backward pass (Table 8's frozen LLM of stage 1: 15 GB each time, on each GPU).

    `mesh_shape` (copies, group) shards each copy of the model over a group of ranks and
    replicates it across the groups (FSDP2's hybrid sharding over a 2-D mesh): the gathers of
    each pass stay within a group, and the groups all-reduce the gradients once a step. The
    default, (ranks,), shards one copy over all.

    With `bf16`, each unit computes with bf16 weights and reduces its gradients in
    `reduce_dtype`; the sharded master weights, gradients and AdamW state stay fp32."""
    plan = shard_plan(model)
    check_uniform(plan)
    # the ViT returns its patch tokens as a slice and the adapter a linear layer's output, views
    # FSDP warns of at each forward pass; the model takes them out of place only (QwenVL
    # .hidden_states: `.to`, `.reshape`, `index_copy`), so the hook FSDP fears losing is kept
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDP(VisionTransformer|"
                            r"PositionAwareAdapter)\) returned a view tensor")
    shape = mesh_shape or (dist.get_world_size(),)
    mesh = init_device_mesh(device.type, shape,
                            mesh_dim_names=("replicate", "shard")[-len(shape):])
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce_dtype)
              if bf16 else MixedPrecisionPolicy())
    move_buffers(model, device)
    ends = forward_ends(model)
    replicated: set[nn.Parameter] = set()
    for module, own in zip(plan, unit_parameters(plan)):
        weights.fill([param for _, param in own], device)
        params = [module.get_parameter(name) for name, _ in own]  # filling made them anew
        if replicate_frozen and params and module is not model and not any(
                param.requires_grad for param in params):
            if bf16:
                for param in params:
                    param.data = param.data.to(torch.bfloat16)
            replicated.update(params)
            continue
        fully_shard(module, mesh=mesh, mp_policy=policy,
                    reshard_after_forward=module not in ends,
                    ignored_params=replicated.intersection(module.parameters()) or None)
    return model


def replicated_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters a sharded model holds whole on every rank (`shard`'s frozen units)."""
    return [(name, param) for name, param in model.named_parameters()
            if not isinstance(param, DTensor)]


def replicated_note(model: nn.Module) -> str:
    """What a sharded model holds whole on every rank, for the start-up line ("" if nothing)."""
    sizes: dict[str, int] = {}
    for name, param in replicated_parameters(model):
        component = name.split(".")[0]
        sizes[component] = sizes.get(component, 0) + param.numel() * param.element_size()
    return "".join(f", frozen {component} whole on each rank ({size / 2 ** 30:.2f} GiB)"
                   if size >= 2 ** 30 else
                   f", frozen {component} whole on each rank ({size / 2 ** 20:.1f} MiB)"
                   for component, size in sizes.items())


def hybrid_note(mesh_shape: tuple[int, ...]) -> str:
    """How the model's copies are sharded, for the start-up line ("" for one copy)."""
    if len(mesh_shape) == 1:
        return ""
    copies, group = mesh_shape
    return f" in {copies} copies, each sharded over {group} ranks"


def state_copies(world: World, mesh_shape: tuple[int, ...] | None) -> tuple[int, int]:
    """How many ranks hold each slice of the trained state, and which of them this rank is:
    every rank under DDP (`mesh_shape` None), the copies of the model under hybrid sharding
    (the mesh's rows: rank r is in copy r // group), one under FSDP over all the ranks."""
    if mesh_shape is None:
        return world.size, world.rank
    if len(mesh_shape) == 1:
        return 1, 0
    copies, group = mesh_shape
    return copies, world.rank // group


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    grouped: bool = False  # a process group joins the ranks (under torchrun, one rank too)
    # gloo over the same ranks: collectives on host values that must not wait for the GPU
    host_group: Any = field(default=None, repr=False, compare=False)
    # gloo again, for checkpoints alone: their writing thread's collectives run beside the loop's
    checkpoint_group: Any = field(default=None, repr=False, compare=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None) -> torch.device:
        if requested:
            return torch.device(requested)
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def wrap(self, model: nn.Module, weights: InitialWeights, device: torch.device,
             strategy: str = "ddp", bf16: bool = False, replicate_frozen: bool = True,
             mesh_shape: tuple[int, ...] | None = None,
             reduce_dtype: torch.dtype = torch.float32) -> nn.Module:
        """Fill `model`'s parameters (on the meta device) on `device` and return the module to
        call for training: `model` itself on one rank or under FSDP (sharded in place over
        `mesh_shape`, see `shard`), else a DDP wrapper around it. With `bf16`, gradients are
        reduced across the ranks in `reduce_dtype`."""
        if self.grouped and strategy == "fsdp":
            return shard(model, weights, device, bf16, replicate_frozen, mesh_shape,
                         reduce_dtype)
        move_buffers(model, device)
        weights.fill(model.parameters(), device)
        if self.size == 1:
            return model
        # a text-only micro-batch leaves the ViT and the adapter without gradients on one rank
        replica = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
        if bf16 and reduce_dtype == torch.bfloat16:  # all-reduced in bf16, kept in fp32
            replica.register_comm_hook(None, bf16_compress_hook)
        return replica

    def no_sync(self, model: nn.Module, last: bool, accumulation: str = "sharded"):
        """The gradient reduction that waits for the last micro-batch of a step: DDP's
        all-reduce; under FSDP, with `accumulation` "sharded", only the all-reduce across the
        copies of hybrid sharding, each micro-batch's gradients being reduce-scattered as its
        backward pass runs (held back, every rank would keep the unsharded fp32 gradients of
        all it trains until the step's end: 38 GB for the 9.6 B model at stage 2, on each GPU);
        with "whole", every reduction, for those gradients held."""
        if last or self.size == 1:
            return contextlib.nullcontext()
        if isinstance(model, FSDPModule):
            return _reduce_on_last(model, accumulation)
        return model.no_sync()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def host_sum(self, values: list[int]) -> list[int]:
        """`values` summed over the ranks on the host (gloo): no wait for queued GPU work."""
        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(tensor, group=self.host_group)
        return tensor.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's picklable `value`, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value, group=self.host_group)
        return values

    def each(self, value: float, device: torch.device) -> list[float]:
        """Every rank's `value`, in rank order, on every rank."""
        values = [0.0] * self.size
        values[self.rank] = value
        return self.sum(values, device)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def checkpoint_barrier(self) -> None:
        if self.size > 1:
            dist.barrier(group=self.checkpoint_group)

    def finish(self) -> None:
        """The end of a run that went well: every rank waits for the others before the group is
        torn down (gloo aborts a rank whose peer tore it down first)."""
        self.barrier()
        self.close()

    def close(self) -> None:
        if self.grouped and dist.is_initialized():
            dist.destroy_process_group()


def join_world() -> World:
    """The process group `torchrun` describes in the environment (of one process too: FSDP
    then shards over a mesh of one), or a world of one without a group."""
    if "RANK" not in os.environ:
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ.get("WORLD_SIZE", "1")),
                  int(os.environ.get("LOCAL_RANK", "0")), grouped=True)
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if world.size > 1:
        world.host_group = dist.new_group(backend="gloo")
    world.checkpoint_group = dist.new_group(backend="gloo")
    return world


@contextlib.contextmanager
def _reduce_on_last(model: FSDPModule, accumulation: str):
    """With "sharded" accumulation: reduce-scatter within each copy now, all-reduce across the
    copies later (hybrid sharding adds the sums it held back; a mesh of one copy has no
    all-reduce to hold back). With "whole": no reduction now; the gradients accumulate
    unsharded."""
    hold_back = (model.set_requires_gradient_sync if accumulation == "whole"
                 else model.set_requires_all_reduce)
    hold_back(False)
    try:
        yield
    finally:
        hold_back(True)
