"""Qwen-7B, the paper's LLM, as a `transformers` Qwen2 decoder.

Qwen (v1) checkpoints (`model_type: qwen`) ship their own modelling code, which takes neither
position ids nor a mask per packed sample, and lays its decoder layers out where the FSDP plan
does not look. Their architecture is Qwen2's: RMSNorm, rotary embeddings on the two halves of
each head (base `rotary_emb_base`), causal attention with biased query/key/value projections
(fused into `c_attn`) and an unbiased output projection, and a SwiGLU MLP `c_proj(w1(x) *
silu(w2(x)))`. So the trainer builds a Qwen2 model of the same shape and reads the checkpoint's
tensors into it under Qwen2's names, `c_attn` split into its query, key and value rows: packing,
varlen attention, FSDP and activation checkpointing then work as for any Qwen2.

What Qwen's code adds beyond Qwen2 applies past its `seq_length` only (dynamic NTK rotary
scaling; log-n attention scaling, and that at inference alone), so training rows of up to
`seq_length` tokens (Table 8's 2048) compute what Qwen's own code computes.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable

import torch
from transformers import Qwen2Config

Reader = Callable[[], torch.Tensor]

# Qwen (v1) name -> Qwen2 name, for every tensor but the fused query/key/value projection
RENAMES = [
    (r"transformer\.wte\.", "model.embed_tokens."),
    (r"transformer\.ln_f\.", "model.norm."),
    (r"transformer\.h\.(\d+)\.ln_1\.", r"model.layers.\1.input_layernorm."),
    (r"transformer\.h\.(\d+)\.ln_2\.", r"model.layers.\1.post_attention_layernorm."),
    (r"transformer\.h\.(\d+)\.attn\.c_proj\.", r"model.layers.\1.self_attn.o_proj."),
    (r"transformer\.h\.(\d+)\.mlp\.w1\.", r"model.layers.\1.mlp.up_proj."),
    (r"transformer\.h\.(\d+)\.mlp\.w2\.", r"model.layers.\1.mlp.gate_proj."),
    (r"transformer\.h\.(\d+)\.mlp\.c_proj\.", r"model.layers.\1.mlp.down_proj."),
    (r"lm_head\.", "lm_head."),
]
FUSED = re.compile(r"transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)")


def qwen_v1_config(folder: str) -> dict | None:
    """The config.json of a Qwen (v1) checkpoint folder; None for any other folder."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    return config if config.get("model_type") == "qwen" else None


def qwen2_config(config: dict, attn_implementation: str) -> Qwen2Config:
    """The Qwen2 decoder of a Qwen (v1) config's shape."""
    heads = config["num_attention_heads"]
    width = config["hidden_size"] // heads
    if config.get("rotary_pct", 1.0) != 1.0 or config.get("kv_channels", width) != width:
        raise ValueError("a Qwen (v1) config with partial rotary embeddings or heads narrower "
                         "than hidden_size / heads has no Qwen2 equivalent")
    qwen2 = Qwen2Config(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"] // 2,  # w1 and w2 share Qwen's figure
        num_hidden_layers=config["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=heads, rms_norm_eps=config.get("layer_norm_epsilon", 1e-6),
        rope_theta=config.get("rotary_emb_base", 10000),
        max_position_embeddings=config.get("seq_length", 2048), tie_word_embeddings=False)
    qwen2._attn_implementation = attn_implementation
    return qwen2


def qwen2_readers(readers: dict[str, Reader], hidden_size: int) -> dict[str, Reader]:
    """`readers` of a Qwen (v1) checkpoint under Qwen2's names; each fused projection gives
    three readers of its thirds (read once for the three)."""
    renamed: dict[str, Reader] = {}
    for name, read in readers.items():
        fused = FUSED.fullmatch(name)
        if fused:
            layer, kind = fused.groups()
            whole = read_once(read)  # q, k and v are filled one after another
            for index, part in enumerate(("q_proj", "k_proj", "v_proj")):
                renamed[f"model.layers.{layer}.self_attn.{part}.{kind}"] = (
                    lambda index=index, whole=whole:
                    whole()[index * hidden_size:(index + 1) * hidden_size])
            continue
        for pattern, replacement in RENAMES:
            new, count = re.subn(f"^{pattern}", replacement, name)
            if count:
                renamed[new] = read
                break
        else:
            renamed[name] = read  # not a name of Qwen's: left as it is, for no Qwen2 parameter
    return renamed


def read_once(read: Reader, parts: int = 3) -> Reader:
    """`read`, run once for its `parts` takers; the tensor is let go after the last."""
    held: list[torch.Tensor] = []
    taken = [0]

    def reader() -> torch.Tensor:
        if not held:
            held.append(read())
        tensor = held[0]
        taken[0] += 1
        if taken[0] == parts:
            held.clear()
        return tensor

    return reader
