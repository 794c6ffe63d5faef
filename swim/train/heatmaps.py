"""A PIL panel of attention heatmaps over temporal cells next to the ground-truth masks.

One block per supervised row: a title line, then one column per temporal cell with the attention
map on top and the ground-truth mask below (a frame under both when frames are given). Cells
without ground truth get a grey mask tile. Rendering is numpy + PIL only (no matplotlib).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

# An "inferno"-like colour ramp: stops at 0, 0.25, 0.5, 0.75, 1.
RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
TITLE_PX = 14
GAP_PX = 2
NO_MASK_GREY = 96


@dataclass
class HeatmapRow:
    """One supervised row to draw.

    Attributes:
        title: a label, e.g. the sample id and the phrase.
        attention: ``(T, h, w)`` float, the attention over the sample's visual tokens per cell.
        mask: ``(T, h', w')`` float in [0, 1], the ground truth per cell (token grid or pixels).
        valid: ``(T,)`` bool, cells that have ground truth; ``None`` means all.
        frames: ``(T, H, W, 3)`` uint8, one frame per cell to draw under the maps, or ``None``.
    """

    title: str
    attention: torch.Tensor
    mask: torch.Tensor
    valid: torch.Tensor | None = None
    frames: np.ndarray | None = None


def colorize(values: np.ndarray) -> np.ndarray:
    """``(h, w)`` float in [0, 1] -> ``(h, w, 3)`` uint8 through :data:`RAMP`."""
    position = np.clip(values, 0.0, 1.0) * (len(RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(RAMP) - 2)
    frac = (position - low)[..., None]
    return (RAMP[low] * (1 - frac) + RAMP[low + 1] * frac).astype(np.uint8)


def _normalise(cell: np.ndarray) -> np.ndarray:
    """Min-max normalise a ``(h, w)`` map to [0, 1] (a constant map gives zeros)."""
    low, high = float(cell.min()), float(cell.max())
    return (cell - low) / (high - low) if high > low else np.zeros_like(cell)


def _tile(rgb: np.ndarray, size: tuple[int, int], frame: np.ndarray | None) -> Image.Image:
    """Upsample ``(h, w, 3)`` uint8 to ``size`` (W, H) with nearest neighbour; blend over a frame if given."""
    tile = Image.fromarray(rgb).resize(size, Image.NEAREST)
    if frame is None:
        return tile
    return Image.blend(Image.fromarray(frame).resize(size, Image.BILINEAR), tile, 0.6)


def render_rows(rows: Sequence[HeatmapRow], tile_px: int = 84) -> Image.Image:
    """Compose the panel: per row a title, the attention tiles and the mask tiles over its T cells.

    Returns:
        An RGB image of width ``max(T) * (tile_px + 2)`` and height ``len(rows) * (14 + 2 * (tile_px + 2))``.
    """
    if not rows:
        raise ValueError("render_rows needs at least one row")
    num_cells = max(int(row.attention.shape[0]) for row in rows)
    step = tile_px + GAP_PX
    block = TITLE_PX + 2 * step
    panel = Image.new("RGB", (num_cells * step, len(rows) * block), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for r, row in enumerate(rows):
        attention = row.attention.detach().float().cpu().numpy()
        mask = row.mask.detach().float().cpu().numpy()
        if attention.ndim != 3 or mask.ndim != 3 or mask.shape[0] != attention.shape[0]:
            raise ValueError(
                f"heatmap row {row.title!r}: attention {tuple(attention.shape)} and mask {tuple(mask.shape)} "
                "must both be (T, h, w) with the same T"
            )
        valid = np.ones(len(attention), bool) if row.valid is None else row.valid.cpu().numpy().astype(bool)
        # Tiles keep the grid's aspect ratio within a tile_px x tile_px box.
        h, w = attention.shape[1:]
        size = (
            (tile_px, max(1, round(tile_px * h / w))) if w >= h else (max(1, round(tile_px * w / h)), tile_px)
        )
        top = r * block
        draw.text((2, top + 1), row.title[:120], fill=(0, 0, 0))
        for t in range(attention.shape[0]):
            frame = None if row.frames is None else row.frames[t]
            panel.paste(_tile(colorize(_normalise(attention[t])), size, frame), (t * step, top + TITLE_PX))
            if valid[t]:
                gt = colorize(np.clip(mask[t], 0.0, 1.0))
            else:
                gt = np.full((*mask.shape[1:], 3), NO_MASK_GREY, np.uint8)
            panel.paste(_tile(gt, size, frame), (t * step, top + TITLE_PX + step))
    return panel
