"""A PIL panel of attention heatmaps over temporal cells next to the ground-truth masks.

One block per supervised row: a title line, then a labelled attention row and ground-truth row
with one column per temporal cell (a frame under both when frames are given, each attention tile
with its pointing-game score when given), and a colour bar under the panel. Cells without ground
truth get a grey mask tile. Rendering is numpy + PIL only (no matplotlib).
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
# The left column that names the rows ("attention", "ground truth").
LABEL_PX = 80
COLORBAR_PX = 10
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
        scores: per cell, the pointing-game score of the map against the mask (``None`` for a cell
            without ground truth), or ``None`` to draw no scores.
    """

    title: str
    attention: torch.Tensor
    mask: torch.Tensor
    valid: torch.Tensor | None = None
    frames: np.ndarray | None = None
    scores: list[float | None] | None = None


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


def _row_size(attention: np.ndarray, tile_px: int) -> tuple[int, int]:
    """Tile size (W, H) that keeps the grid's aspect ratio within a ``tile_px`` box."""
    h, w = attention.shape[1:]
    return (tile_px, max(1, round(tile_px * h / w))) if w >= h else (max(1, round(tile_px * w / h)), tile_px)


def _colour_bar(width: int) -> Image.Image:
    """A ``(COLORBAR_PX + TITLE_PX)``-high strip: the ramp from low to high with its two ends named."""
    strip = Image.new("RGB", (width, COLORBAR_PX + TITLE_PX), (255, 255, 255))
    ramp = colorize(np.tile(np.linspace(0.0, 1.0, max(width, 2))[None, :], (COLORBAR_PX, 1)))
    strip.paste(Image.fromarray(ramp[:, :width]), (0, 0))
    draw = ImageDraw.Draw(strip)
    draw.text((1, COLORBAR_PX + 1), "low", fill=(0, 0, 0))
    draw.text((max(width - 26, 30), COLORBAR_PX + 1), "high", fill=(0, 0, 0))
    draw.text((max(width // 2 - 60, 30), COLORBAR_PX + 1), "attention (per cell)", fill=(0, 0, 0))
    return strip


def render_rows(rows: Sequence[HeatmapRow], tile_px: int = 84) -> Image.Image:
    """Compose the panel: per row a title, then the attention and the ground-truth rows over its T cells.

    A label column names the two rows; each attention tile carries its pointing-game score when
    the row has ``scores``; a colour bar under the panel reads the ramp (maps are min-max
    normalised per cell).

    Returns:
        An RGB image of width ``LABEL_PX + max(T) * (tile_px + 2)`` and height
        ``len(rows) * (14 + 2 * (tile_px + 2)) + COLORBAR_PX + 14``.
    """
    if not rows:
        raise ValueError("render_rows needs at least one row")
    num_cells = max(int(row.attention.shape[0]) for row in rows)
    step = tile_px + GAP_PX
    block = TITLE_PX + 2 * step
    width = LABEL_PX + num_cells * step
    panel = Image.new("RGB", (width, len(rows) * block + COLORBAR_PX + TITLE_PX), (255, 255, 255))
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
        size = _row_size(attention, tile_px)
        top = r * block
        draw.text((2, top + 1), row.title[:160], fill=(0, 0, 0))
        draw.text((2, top + TITLE_PX + 2), "attention", fill=(0, 0, 0))
        draw.text((2, top + TITLE_PX + step + 2), "ground truth", fill=(0, 0, 0))
        for t in range(attention.shape[0]):
            frame = None if row.frames is None else row.frames[t]
            left = LABEL_PX + t * step
            panel.paste(_tile(colorize(_normalise(attention[t])), size, frame), (left, top + TITLE_PX))
            if valid[t]:
                gt = colorize(np.clip(mask[t], 0.0, 1.0))
            else:
                gt = np.full((*mask.shape[1:], 3), NO_MASK_GREY, np.uint8)
            panel.paste(_tile(gt, size, frame), (left, top + TITLE_PX + step))
            score = None if row.scores is None else row.scores[t]
            if score is not None:
                draw.rectangle((left, top + TITLE_PX, left + 48, top + TITLE_PX + 11), fill=(0, 0, 0))
                draw.text((left + 1, top + TITLE_PX), f"pt {score:.2f}", fill=(255, 255, 255))
    panel.paste(_colour_bar(num_cells * step), (LABEL_PX, len(rows) * block))
    return panel
