"""The stage plans of Table 8 as one overridable config per stage.

`stage_config(stage, path)` starts from the paper's values for that stage and applies a YAML file
on top (any key, nested sections included); unknown keys are an error. The model section defaults
to a tiny random-init model so that `corpus train` runs anywhere; a real run names an open_clip
config and local checkpoints (`trainer/configs/qwen-vl-7b.yaml`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from corpus.config import ConfigError, from_mapping, merge, read_yaml_mapping

COMPONENTS = ("visual", "adapter", "llm")


@dataclass
class VisionConfig:
    """open_clip ViT. `open_clip_model` names any open_clip config (ViT-bigG-14 in the paper);
    without it a custom ViT is built from the fields below (the tiny default)."""

    open_clip_model: str | None = None
    pretrained: str | None = None  # local open_clip checkpoint file
    width: int = 64
    layers: int = 2
    head_width: int = 32
    mlp_ratio: float = 4.0
    patch_size: int = 14  # the paper's stride

    def validate(self) -> None:
        if self.pretrained and not self.open_clip_model:
            raise ConfigError("model.visual.pretrained needs model.visual.open_clip_model")


@dataclass
class AdapterConfig:
    queries: int = 256  # Table 8: learnable query numbers
    width: int | None = None  # cross-attention width; None = the LLM width
    heads: int | None = None  # None = width // 128 (at least 1)

    def validate(self) -> None:
        if int(round(self.queries ** 0.5)) ** 2 != self.queries:
            raise ConfigError(
                f"model.adapter.queries must be a square (a 2D grid), got {self.queries}")


@dataclass
class LLMConfig:
    """A Hugging Face causal LM: `pretrained` is a local folder; else a random-init Qwen2 config."""

    pretrained: str | None = None
    # run a checkpoint's own modelling and tokenizer code (Qwen-7B's tokenizer; its model is read
    # into a Qwen2 without it, trainer/qwen_v1.py)
    trust_remote_code: bool = False
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    vocab_size: int | None = None  # None = the tokenizer's; larger pads the embeddings
    # "sdpa" (any device; packed rows get a dense block-diagonal mask), "varlen" (CUDA: flash
    # varlen kernel, no mask; trainer/attention.py), or any other transformers implementation
    attn_implementation: str = "sdpa"


@dataclass
class ModelConfig:
    visual: VisionConfig = field(default_factory=VisionConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)


@dataclass
class StageConfig:
    stage: int = 1
    trainable: list[str] = field(default_factory=lambda: ["visual", "adapter"])
    image_size: int | None = None  # None = the manifest's (Table 8: 224 / 448 / 448)
    seq_len: int | None = None  # None = the manifest's (Table 8: 512 / 2048 / 2048)
    peak_lr: float = 2e-4
    min_lr: float = 1e-6
    warmup_steps: int = 500
    steps: int = 50_000
    vit_lr_decay: float = 0.95  # layer-wise: block i of L gets decay ** (L + 1 - i)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    micro_batch_size: int = 4  # packed rows per forward pass, per process
    # packed rows per optimizer step over all processes (Table 8); at stages 1 and 3 a row is one
    # sample. Accumulation follows: global_batch = micro_batch_size x processes x grad_accum
    global_batch: int = 30_720
    grad_accum: int | None = None  # None = derived; a stated value must agree with the above
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or "bf16", "fp32"
    seed: int | None = None  # None = the manifest's
    tokenizer: str | None = None  # None = the manifest's, else the embedded default
    compile: bool = False  # torch.compile every ViT block and LLM layer (the first steps compile)
    # components whose blocks (ViT blocks, decoder layers) keep no activations for the backward
    # pass but recompute them there: "visual", "llm". Their activation memory for about a third
    # more of their compute, where it buys a larger micro-batch
    activation_checkpointing: list[str] = field(default_factory=list)
    # under torchrun: "ddp" (a full replica per GPU) or "fsdp" (FSDP2: parameters, gradients and
    # optimizer state sharded over the GPUs; for models whose replica does not fit one GPU)
    distributed: str = "ddp"
    # under fsdp: a frozen component (Table 8: the LLM at stage 1, the ViT at stage 3) held whole
    # on every GPU, in bf16 when computing in bf16, and never gathered; false shards it too, for
    # a GPU that cannot hold it whole
    replicate_frozen: bool = True
    # under fsdp: the GPUs each copy of the model is sharded over (hybrid sharding: e.g. a node's
    # 8, so FSDP's gathers stay within a node and the nodes all-reduce the gradients once a
    # step); None = all of them
    fsdp_shard_size: int | None = None
    # under fsdp, how gradients accumulate over a step's micro-batches: "sharded" (each
    # micro-batch's reduce-scattered as its backward pass runs: a GPU holds 1/G of them) or
    # "whole" (kept whole until the step's last micro-batch, then reduced once: fewer reductions
    # for the fp32 gradients of all a GPU trains held through the step)
    fsdp_accumulation: str = "sharded"
    # under torchrun with bf16, the dtype gradients are reduced in across the processes (DDP's
    # all-reduce, FSDP's reduce-scatters and all-reduces): "float32", or "bfloat16" for half the
    # bytes of each reduction at bf16's precision of the sums
    reduce_dtype: str = "float32"
    num_workers: int = 2  # image-decoding processes; 0 decodes in the training process
    prefetch: int = 8  # packed sequences decoded ahead per worker
    pack_window: int = 256  # samples read per task before planning their packs
    # the data stream's lanes: each reads its own part of every task's shards, and each process
    # reads only its lanes, so no process reads the whole corpus. A run's rows are the same for
    # any number of processes that divides it (an exact resume on another number). None = the
    # number of processes
    data_lanes: int | None = None
    # micro-batches a background thread keeps ready (read, packed, decoded, stacked, pinned on
    # CUDA) while the loop trains; 0 prepares each in the loop, while the GPU waits for it
    batches_ahead: int = 8
    log_every: int = 10
    save_every: int = 1000
    # a checkpoint is copied to host memory and written by a thread while training goes on;
    # false holds the loop until it is on disk (and needs no host copy of a rank's state)
    async_checkpoint: bool = True
    keep_checkpoints: int = 2
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        unknown = sorted(set(self.trainable) - set(COMPONENTS))
        if unknown:
            raise ConfigError(f"trainable: unknown component(s) {unknown}; known: {COMPONENTS}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        recomputable = ("visual", "llm")
        if set(self.activation_checkpointing) - set(recomputable):
            raise ConfigError(f"activation_checkpointing: {self.activation_checkpointing} names "
                              f"other than {list(recomputable)}")
        if self.distributed not in ("ddp", "fsdp"):
            raise ConfigError(f"distributed must be ddp or fsdp, got {self.distributed!r}")
        if not self.trainable:
            raise ConfigError("trainable: nothing to train")
        stated_accum = 1 if self.grad_accum is None else self.grad_accum
        if min(self.steps, self.micro_batch_size, self.global_batch, stated_accum) < 1:
            raise ConfigError("steps, micro_batch_size, global_batch and grad_accum must be >= 1")
        if min(self.num_workers, self.batches_ahead) < 0:
            raise ConfigError("num_workers and batches_ahead must be >= 0")
        if self.data_lanes is not None and self.data_lanes < 1:
            raise ConfigError("data_lanes must be >= 1")
        if self.fsdp_shard_size is not None and self.fsdp_shard_size < 1:
            raise ConfigError("fsdp_shard_size must be >= 1")
        if self.fsdp_accumulation not in ("sharded", "whole"):
            raise ConfigError(f"fsdp_accumulation must be sharded or whole, "
                              f"got {self.fsdp_accumulation!r}")
        if self.reduce_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"reduce_dtype must be float32 or bfloat16, "
                              f"got {self.reduce_dtype!r}")

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step that make micro_batch_size x world_size x it exactly
        global_batch; a ConfigError when no whole number does, or a stated grad_accum differs."""
        per_pass = self.micro_batch_size * world_size
        if self.global_batch % per_pass:
            raise ConfigError(
                f"global_batch {self.global_batch} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size} x {world_size} process(es) = {per_pass} rows per pass")
        accumulation = self.global_batch // per_pass
        if self.grad_accum is not None and self.grad_accum != accumulation:
            raise ConfigError(
                f"grad_accum {self.grad_accum} disagrees with global_batch {self.global_batch}: "
                f"micro_batch_size {self.micro_batch_size} x {world_size} process(es) needs "
                f"{accumulation} (drop grad_accum to derive it)")
        return accumulation

    def fsdp_mesh(self, world_size: int) -> tuple[int, ...]:
        """The ranks' mesh under fsdp: (world_size,), one copy sharded over all the ranks (also
        where fsdp_shard_size is as many or more), or (copies, fsdp_shard_size), each copy
        sharded over a group; a ConfigError when the groups cannot divide the ranks."""
        size = self.fsdp_shard_size
        if size is None or size >= world_size:
            return (world_size,)
        if world_size % size:
            raise ConfigError(f"fsdp_shard_size {size} does not divide the {world_size} "
                              "processes into groups")
        return (world_size // size, size)


# Table 8, column by column. Its gradient accumulation (6 / 8 / 8) belongs to the paper's cluster
# (5120 / 512 / 16 rows per pass over all its data-parallel ranks); here the global batch is the
# setting and accumulation follows from the micro-batch and the number of processes.
TABLE_8: dict[int, dict[str, Any]] = {
    1: dict(stage=1, trainable=["visual", "adapter"], peak_lr=2e-4, min_lr=1e-6,
            warmup_steps=500, steps=50_000, vit_lr_decay=0.95, global_batch=30_720),
    2: dict(stage=2, trainable=["visual", "adapter", "llm"], peak_lr=5e-5, min_lr=1e-5,
            warmup_steps=400, steps=19_000, vit_lr_decay=0.95, global_batch=4_096),
    3: dict(stage=3, trainable=["adapter", "llm"], peak_lr=1e-5, min_lr=1e-6,
            warmup_steps=3_000, steps=8_000, vit_lr_decay=0.0, global_batch=128),
}


def stage_config(stage: int, path: str | None = None,
                 overrides: dict[str, Any] | None = None) -> StageConfig:
    """Table 8's plan for `stage`, then the YAML file at `path`, then `overrides`, on top."""
    if stage not in TABLE_8:
        raise ConfigError(f"stage must be 1, 2 or 3, got {stage}")
    mapping = dataclasses.asdict(StageConfig())
    mapping.update(TABLE_8[stage])
    if path is not None:
        document = read_yaml_mapping(path)
        if document.get("stage", stage) != stage:
            raise ConfigError(f"{path}: stage {document['stage']} given for stage {stage}")
        mapping = merge(mapping, document)
    mapping = merge(mapping, overrides or {})
    return from_mapping(StageConfig, mapping, path or "stage config")


def model_config(mapping: dict[str, Any]) -> ModelConfig:
    return from_mapping(ModelConfig, mapping, "model")
