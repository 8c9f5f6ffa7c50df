"""Packed-sequence attention for the LLM: what each attention implementation is told of the
samples packed in a row, and `attn_implementation: varlen` for CUDA.

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
    if "scale" in options:
        options = {**options, "scale": scaling}
    elif scaling is not None and abs(scaling - dim ** -0.5) > 1e-6 * scaling:
        raise RuntimeError(f"this PyTorch's varlen_attn takes no scale; the model asks for "
                           f"{scaling} (not 1/sqrt({dim}))")
    if kv_heads != heads and "enable_gqa" not in options:  # older kernels: repeat the kv heads
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    out = varlen_attn(query.transpose(1, 2).reshape(batch * length, heads, dim), key, value,
                      cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, **options)
    return out.view(batch, length, heads, dim), None


def causal_options(function) -> dict:
    """Causal masking (and grouped-query support) as this PyTorch's varlen_attn spells them; a
    `scale` entry (None: the kernel's 1/sqrt(head dim)) where it takes one (the first releases
    did not)."""
    parameters = inspect.signature(function).parameters
    options = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    if "enable_gqa" in parameters:
        options["enable_gqa"] = True
    if "scale" in parameters:
        options["scale"] = None
    return options


def packed_attention_arguments(config, position_ids: torch.Tensor, sample_bounds: torch.Tensor,
                               longest: int) -> dict:
    """The keyword arguments that tell a Hugging Face decoder of `config` where the packed
    samples of `position_ids` (restarting at 0 for each) begin, with no value read back from the
    device: the varlen kernel's sample bounds, or sdpa's causal mask made here (Hugging Face would
    look for the restarts in the position ids and read the answer back). Other implementations
    get nothing and find the samples themselves."""
    implementation = config._attn_implementation
    if implementation == VARLEN:
        return dict(cu_seq_lens_q=sample_bounds, cu_seq_lens_k=sample_bounds,
                    max_length_q=longest, max_length_k=longest)
    if implementation != "sdpa" or set(getattr(config, "layer_types", None)
                                       or ["full_attention"]) != {"full_attention"}:
        return {}
    if sample_bounds.numel() - 1 == position_ids.shape[0]:  # one sample a row: sdpa's is_causal
        return {"attention_mask": {"full_attention": None}}
    return {"attention_mask": {"full_attention": packed_causal_mask(position_ids)}}


def packed_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """bool [B, 1, L, L]: a token sees the earlier tokens of its own sample (a sample starts where
    its position is 0)."""
    sample = (position_ids == 0).cumsum(-1)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return ((sample.unsqueeze(-1) == sample.unsqueeze(-2)) & causal).unsqueeze(1)


# read once here: a compiled graph must not call inspect
CAUSAL_OPTIONS = causal_options(varlen_attn) if varlen_attn is not None else {}


# no mask function is registered: Hugging Face then builds no mask and does not look for packed
# samples in the position ids either (which reads a value back from the GPU); the sample bounds
# replace the mask
AttentionInterface.register(VARLEN, varlen_attention)
