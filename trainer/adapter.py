"""The position-aware vision-language adapter of §2.1.

One cross-attention layer: learned queries attend to the ViT's patch features, compressing any
number of patches (256 at 224 px, 1024 at 448 px) to a fixed number of vectors. 2D absolute sin-cos
position encodings are added to the queries (on their own square grid) and to the keys (on the
patch grid), so the compressed vectors keep where things are. The values carry no position.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def sincos_2d(width: int, grid: int) -> torch.Tensor:
    """[grid * grid, width] encodings: half the channels encode the row, half the column."""
    if width % 4:
        raise ValueError(f"2D sin-cos encodings need a width divisible by 4, got {width}")
    quarter = width // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * frequencies[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class PositionAwareAdapter(nn.Module):
    def __init__(self, vision_width: int, llm_width: int, queries: int = 256,
                 width: int | None = None, heads: int | None = None):
        super().__init__()
        width = width or llm_width
        heads = heads or max(1, width // 128)
        self.query_grid = math.isqrt(queries)
        if self.query_grid ** 2 != queries:
            raise ValueError(f"query count must be a square, got {queries}")
        self.width = width
        self.query = nn.Parameter(torch.empty(queries, width))
        self.reset_parameters()
        self.kv_proj = nn.Linear(vision_width, width, bias=False)
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Linear(width, llm_width)
        self.register_buffer("query_pos", sincos_2d(width, self.query_grid), persistent=False)
        self._key_pos: dict[tuple[int, torch.device], torch.Tensor] = {}

    def reset_parameters(self) -> None:
        """The parameters this module holds itself (its layers initialise their own)."""
        nn.init.trunc_normal_(self.query, std=0.02)

    @property
    def queries(self) -> int:
        return self.query.shape[0]

    def key_pos(self, patches: int, device: torch.device) -> torch.Tensor:
        grid = math.isqrt(patches)
        if grid * grid != patches:
            raise ValueError(f"patch count must be a square grid, got {patches}")
        if (grid, device) not in self._key_pos:
            self._key_pos[grid, device] = sincos_2d(self.width, grid).to(device)
        return self._key_pos[grid, device]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[images, patches, vision_width] -> [images, queries, llm_width]."""
        kv = self.ln_kv(self.kv_proj(features))
        keys = kv + self.key_pos(kv.shape[1], kv.device).to(kv.dtype)
        query = (self.ln_q(self.query) + self.query_pos.to(self.query.dtype))
        query = query.unsqueeze(0).expand(kv.shape[0], -1, -1).to(kv.dtype)
        out, _ = self.attn(query, keys, kv, need_weights=False)
        return self.proj(self.ln_post(out))
