"""The Qwen-VL model of §2.1: open_clip ViT (patch 14) -> position-aware adapter -> causal LM.

Each image becomes `<img>` + N adapter outputs + `</img>` in the LLM's input: the data loader
writes N `IMAGE_PAD` tokens between the two special tokens, and `forward` overwrites their
embeddings with the adapter's vectors, in reading order. The loss is the summed cross-entropy of
the supervised next tokens (targets of -100 carry no loss), computed only where a target exists,
so prompts and image slots cost no LM-head work.

Packed sequences: position ids restart at 0 for every sample; sdpa gets a block-diagonal causal
mask, or the varlen kernel each sample's bounds (trainer/attention.py), so no token attends
across samples. The image slots, the supervised positions and the sample bounds come as a
`PackedLayout` the loader computed on the CPU: the forward and backward passes read nothing back
from the GPU.
"""
from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, create_model
from open_clip.transformer import VisionTransformer
from torch import nn
from torch.distributed.fsdp import FSDPModule
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from corpus.config import ConfigError
from trainer.adapter import PositionAwareAdapter
from trainer.attention import packed_attention_arguments
from trainer.data import PackedLayout
from trainer.qwen_v1 import qwen2_config, qwen_v1_config
from trainer.stages import COMPONENTS, LLMConfig, ModelConfig, VisionConfig
from trainer.weights import building_on_meta


def build_visual(config: VisionConfig, image_size: int) -> VisionTransformer:
    """The ViT `config` names, without reading any weights (trainer/weights.py fills them)."""
    if config.open_clip_model:
        # open_clip warns of a random init, which here is not one when weights follow
        with _warnings_off():
            clip = create_model(config.open_clip_model, load_weights=False,
                                force_image_size=image_size, pretrained_text=False,
                                device="meta" if building_on_meta()
                                else torch.get_default_device())
        visual = clip.visual
        if not isinstance(visual, VisionTransformer):
            raise ValueError(f"{config.open_clip_model}: not an open_clip ViT")
    else:
        visual = VisionTransformer(
            image_size=image_size, patch_size=config.patch_size, width=config.width,
            layers=config.layers, heads=max(1, config.width // config.head_width),
            mlp_ratio=config.mlp_ratio, output_dim=config.width)
    visual.output_tokens = True
    visual.proj = None  # the adapter reads patch tokens; the contrastive projection is unused
    return visual


@contextlib.contextmanager
def _warnings_off():
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def build_llm(config: LLMConfig, vocab_size: int) -> Qwen2ForCausalLM:
    """The causal LM: the architecture of `config.pretrained` from its config alone, without
    reading its weights (trainer/weights.py fills them), or a Qwen2 of the config's sizes."""
    if config.pretrained:
        qwen_v1 = qwen_v1_config(config.pretrained)
        if qwen_v1:  # the paper's Qwen-7B: a Qwen2 of its shape (trainer/qwen_v1.py)
            llm = Qwen2ForCausalLM(qwen2_config(qwen_v1, config.attn_implementation))
        else:
            llm = AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(config.pretrained, local_files_only=True,
                                           trust_remote_code=config.trust_remote_code),
                dtype=torch.float32, attn_implementation=config.attn_implementation,
                trust_remote_code=config.trust_remote_code)
        if llm.get_input_embeddings().num_embeddings < vocab_size:
            llm.resize_token_embeddings(vocab_size, mean_resizing=False)  # values come later
        return llm
    if config.vocab_size is not None and config.vocab_size < vocab_size:
        raise ValueError(f"model.llm.vocab_size {config.vocab_size} < tokenizer's {vocab_size}")
    llm_config = Qwen2Config(
        vocab_size=config.vocab_size or vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_position_embeddings, rope_theta=config.rope_theta,
        tie_word_embeddings=False)
    llm_config._attn_implementation = config.attn_implementation
    return Qwen2ForCausalLM(llm_config)


class QwenVL(nn.Module):
    def __init__(self, config: ModelConfig, image_size: int, vocab_size: int, image_pad_id: int):
        super().__init__()
        self.config = config
        self.image_pad_id = image_pad_id
        self.visual = build_visual(config.visual, image_size)
        self.llm = build_llm(config.llm, vocab_size)
        self.adapter = PositionAwareAdapter(
            self.visual.transformer.width, self.llm.config.hidden_size,
            queries=config.adapter.queries, width=config.adapter.width,
            heads=config.adapter.heads)
        # FSDP gathers each unit's weights in its forward, a collective every rank must join:
        # then a micro-batch without images still runs the ViT and the adapter (on one blank
        # image whose output is added times zero; `blank_image_tokens`)
        self.encode_always = False
        self.register_buffer("pixel_mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def forget_blank_gradients(self) -> None:
        """After a step in which no rank had an image. Where the ViT and the adapter ran on a
        blank image (`encode_always`), their gradients are zeros, and AdamW would count the
        step (weight decay, its moments' bias correction) where one process, which never ran
        them, leaves them untouched: they get no gradient either."""
        for module in (self.visual, self.adapter):
            for param in module.parameters():
                param.grad = None

    @property
    def image_tokens(self) -> int:
        return self.adapter.queries

    @property
    def image_size(self) -> int:
        return self.visual.image_size[0]

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [images, H, W, 3] -> [images, queries, llm width]."""
        x = pixels.permute(0, 3, 1, 2).float().div_(255)
        x = (x - self.pixel_mean) / self.pixel_std
        _, patches = self.visual(x)
        return self.adapter(patches)

    def blank_image_tokens(self, device: torch.device) -> torch.Tensor:
        """What a micro-batch without images runs under FSDP (`encode_always`), whose gathers
        every rank must join: the ViT and the adapter on a blank image, or where the ViT is held
        whole out of FSDP (frozen, at stage 3) the adapter alone, on zero patch features, the
        ViT's output being discarded anyway (a ViT-bigG pass at 448 px spared)."""
        if isinstance(self.visual, FSDPModule):
            return self.encode_images(torch.zeros(1, self.image_size, self.image_size, 3,
                                                  dtype=torch.uint8, device=device))
        patches = self.visual.grid_size[0] * self.visual.grid_size[1]
        return self.adapter(torch.zeros(1, patches, self.visual.transformer.width,
                                        device=device))

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                      pixels: torch.Tensor | None = None,
                      layout: PackedLayout | None = None) -> torch.Tensor:
        """The LLM's last hidden states [B, seq_len, width], images spliced into their slots.
        Without `layout` it is computed here, reading values back from the device."""
        if layout is None:
            layout = PackedLayout.of(input_ids, position_ids, self.image_pad_id)
        embeds = self.llm.get_input_embeddings()(input_ids)
        slots = layout.image_slots.numel()  # known on the host: no read from the device
        if pixels is not None and pixels.shape[0]:
            visual = self.encode_images(pixels).to(embeds.dtype)
            if slots != visual.shape[0] * visual.shape[1]:
                raise ValueError(f"{slots} image slots for {visual.shape[0]} images "
                                 f"of {visual.shape[1]} tokens")
            width = embeds.shape[-1]
            embeds = embeds.reshape(-1, width).index_copy(
                0, layout.image_slots, visual.reshape(-1, width)).view_as(embeds)
        elif slots:
            raise ValueError("image slots without images")
        elif self.encode_always:
            blank = self.blank_image_tokens(input_ids.device)
            embeds = embeds + 0 * blank.sum().to(embeds.dtype)
        packing = packed_attention_arguments(self.llm.config, position_ids, layout.sample_bounds,
                                             layout.longest)
        return self.llm.base_model(inputs_embeds=embeds, position_ids=position_ids,
                                   use_cache=False, **packing).last_hidden_state

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                targets: torch.Tensor, pixels: torch.Tensor | None = None,
                layout: PackedLayout | None = None) -> torch.Tensor:
        """Summed cross-entropy over the supervised targets of the batch."""
        if layout is None:
            layout = PackedLayout.of(input_ids, position_ids, self.image_pad_id, targets)
        hidden = self.hidden_states(input_ids, position_ids, pixels, layout)
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, layout.supervised)
        logits = self.llm.get_output_embeddings()(hidden)
        return F.cross_entropy(logits.float(), targets.reshape(-1).index_select(
            0, layout.supervised), reduction="sum")

    def components(self) -> dict[str, nn.Module]:
        return {"visual": self.visual, "adapter": self.adapter, "llm": self.llm}


def compile_blocks(model: QwenVL) -> None:
    """torch.compile each ViT block and LLM layer in place (identical blocks share one graph;
    parameter names and checkpoints are unchanged)."""
    for block in model.visual.transformer.resblocks:
        block.compile()
    for layer in model.llm.base_model.layers:
        layer.compile()


def checkpoint_activations(model: QwenVL, components: list[str]) -> None:
    """Recompute each block of `components` in the backward pass instead of keeping its
    activations, through the models' own switches: open_clip's for the ViT blocks, Hugging
    Face's for the decoder layers (which leaves module hooks, FSDP's among them, outside the
    recomputation). Parameter names and checkpoints are unchanged."""
    if "visual" in components:
        model.visual.set_grad_checkpointing(True)
    if "llm" in components:
        if not model.llm.supports_gradient_checkpointing:
            raise ConfigError(f"activation_checkpointing: {type(model.llm).__name__} does not "
                              "support it")
        enable = getattr(model.llm, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # older transformers name it so
            model.llm.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_freeze_plan(model: QwenVL, trainable: list[str]) -> None:
    """Table 8: stage 1 trains ViT + adapter, stage 2 all, stage 3 adapter + LLM."""
    for name in COMPONENTS:
        model.components()[name].requires_grad_(name in trainable)


def parameter_counts(model: QwenVL) -> dict[str, int]:
    counts = {name: sum(p.numel() for p in module.parameters())
              for name, module in model.components().items()}
    counts["llm_embeddings"] = model.llm.get_input_embeddings().weight.numel()
    return counts
