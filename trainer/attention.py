"""Packed-sequence attention for the LLM on CUDA: `attn_implementation: varlen`.

With `sdpa`, the block-diagonal causal mask of a packed row is a dense [seq, seq] mask, which
rules out the flash kernel. `varlen` hands PyTorch's flash-attention varlen kernel
(`torch.nn.attention.varlen.varlen_attn`) the cumulative sample lengths instead: every packed
sample is its own causal sequence, with no mask in memory. It is registered with Hugging Face's
attention interfaces, so any `transformers` decoder can use it.
"""
from __future__ import annotations

import inspect

import torch
from transformers import AttentionInterface

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # PyTorch before 2.9
    varlen_attn = None

VARLEN = "varlen"


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """Hugging Face attention-interface signature; query/key/value are [B, heads, L, dim]."""
    if varlen_attn is None:
        raise RuntimeError("varlen attention needs PyTorch >= 2.9 (torch.nn.attention.varlen)")
    if cu_seq_lens_q is None:
        raise ValueError("varlen attention needs cu_seq_lens_q and max_length_q "
                         "(trainer.data.PackedLayout)")
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    # the flash kernel takes 16-bit inputs only; under autocast, rotary embeddings leave q/k in
    # float32 (sdpa is cast by autocast itself, a custom kernel is not)
    if query.dtype not in (torch.float16, torch.bfloat16):
        dtype = (torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda")
                 else torch.bfloat16)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    key = key.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    value = value.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    options = CAUSAL_OPTIONS
    if kv_heads != heads and "enable_gqa" not in options:  # older kernels: repeat the kv heads
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    out = varlen_attn(query.transpose(1, 2).reshape(batch * length, heads, dim), key, value,
                      cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, scale=scaling,
                      **options)
    return out.view(batch, length, heads, dim), None


def causal_options(function) -> dict:
    """Causal masking (and grouped-query support) as this PyTorch's varlen_attn spells them."""
    parameters = inspect.signature(function).parameters
    options = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    if "enable_gqa" in parameters:
        options["enable_gqa"] = True
    return options


# read once here: a compiled graph must not call inspect
CAUSAL_OPTIONS = causal_options(varlen_attn) if varlen_attn is not None else {}


# no mask function is registered: Hugging Face then builds no mask and does not look for packed
# samples in the position ids either (which reads a value back from the GPU); the sample bounds
# replace the mask
AttentionInterface.register(VARLEN, varlen_attention)
