"""SynthDoG's text layout: grids of text boxes (rows x columns) stacked down the page.

A grid picks a row/column count that fits its text size, spreads its columns and gaps over the
width (`fill` is the share the columns take, less where the gaps need more), and gives each
column one alignment. A stack draws the page's `fill` once (1 with chance `full`), then keeps
adding grids, each with its own text size, until the next one no longer fits in `stack_fill` of
the height, and spreads the spare height between them.
Boxes are `[x, y, width, height]` in pixels of the content area's page.
"""
from __future__ import annotations

import numpy as np

from renderers.synthdog.config import LayoutConfig

Box = list  # [x, y, width, height]


def grid_layout(bbox, text_size: float, fill: float,
                config: LayoutConfig) -> list[tuple[Box, str]] | None:
    """Boxes of one grid with rows of height `text_size`, or None if no grid fits."""
    left, top, width, height = bbox
    if width <= 0 or height <= 0 or text_size <= 0:
        return None
    for cell in np.random.permutation(config.max_row * config.max_col):
        rows, cols = cell // config.max_col + 1, cell % config.max_col + 1
        # Each column needs at least one text height, and a gap of one between columns.
        if text_size * (cols * 2 - 1) <= width and text_size * rows <= height:
            break
    else:
        return None

    bound = max(1 - text_size / width * (cols - 1), 0)  # the gaps take a text height each
    fill = float(np.clip(fill, 0, bound))

    # Outer margins: with one column at least one side keeps a margin.
    padding = np.random.randint(4) if cols > 1 else np.random.randint(1, 4)
    pad_left, pad_right = bool(padding // 2), bool(padding % 2)

    # Shares of the width: [margin, column, gap, column, ..., column, margin].
    shares = np.zeros(cols * 2 + 1)
    shares[1:-1] = text_size / width
    extra = 1 - np.random.rand(cols * 2 + 1)
    extra[0] *= pad_left
    extra[-1] *= pad_right
    columns, gaps = extra[1::2], extra[::2]
    columns *= max(fill - shares[1::2].sum(), 0) / columns.sum()
    if gaps.sum() > 0:
        gaps *= max(1 - fill - shares[::2].sum(), 0) / gaps.sum()
    extra[1::2], extra[::2] = columns, gaps
    shares += extra

    xs = np.cumsum([0.0] + list(width * shares))
    layout = []
    for c in range(cols):
        align = config.align[np.random.randint(len(config.align))]
        x, w = xs[c * 2 + 1], xs[c * 2 + 2] - xs[c * 2 + 1]
        for r in range(rows):
            layout.append(([left + x, top + r * text_size, w, text_size], align))
    return layout


def stack_layout(bbox, config: LayoutConfig) -> list[list[tuple[Box, str]]]:
    """Grids stacked top to bottom inside `bbox`, spare height spread between them."""
    left, top, width, height = bbox
    short = min(width, height)
    spacing = np.random.uniform(*config.stack_spacing) * short
    stack_full = np.random.rand() < config.stack_full
    stack_fill = 1.0 if stack_full else np.random.uniform(*config.stack_fill)
    full = np.random.rand() < config.full  # one fill for every grid of the page, as SynthDoG's
    fill = 1.0 if full else np.random.uniform(*config.fill)

    grids, used = [], 0.0
    while True:
        text_size = np.random.uniform(*config.text_scale) * short
        grid = grid_layout([left, top + used, width, height * stack_fill - used], text_size,
                           fill, config)
        if grid is None:
            break
        used = max(box[1] + box[3] - top for box, _ in grid) + spacing
        grids.append(grid)
    used = max(used - spacing, 0)
    spare = max(height - used, 0)
    shifts = np.random.rand(len(grids) + 1)
    shifts *= spare / shifts.sum() if shifts.sum() > 0 else 0
    for grid, shift in zip(grids, np.cumsum(shifts)):
        for box, _ in grid:
            box[1] += shift
    return grids
