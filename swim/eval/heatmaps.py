"""Attention heatmaps over video frames, drawn with numpy and PIL (no plotting library).

A figure is a grid: one column per sampled frame; the first row shows the frames with the ground
truth mask outlined (where a frame has one), each further row one model's attention map of the
tagged words over the same frames, with the same outline. Both frames of a temporal cell show the
cell's map (one visual token covers two consecutive frames); ``task=visualize`` outlines the cell's
ground truth, the union of its two frames' masks, which is what the metrics and the loss compare with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

# Anchor colours of a perceptually ordered dark-to-bright map (black, purple, red, orange, yellow).
_ANCHORS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
    dtype=np.float64,
)
OUTLINE_RGB = (0, 255, 0)
LABEL_HEIGHT = 14
LABEL_WIDTH = 150


@dataclass
class HeatmapRow:
    """One model's map for a figure: a label and the per-cell map ``(T, h, w)``."""

    label: str
    cells: torch.Tensor


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB.

    Args:
        values: ``(H, W)`` float, clipped to [0, 1].

    Returns:
        ``(H, W, 3)`` uint8.
    """
    scaled = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(scaled).astype(np.int64).clip(0, len(_ANCHORS) - 2)
    frac = (scaled - low)[..., None]
    rgb = _ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac
    return rgb.round().astype(np.uint8)


def upsample(cell: torch.Tensor, height: int, width: int) -> np.ndarray:
    """A token-grid map min-max normalised and bilinearly upsampled to the frame.

    Args:
        cell: ``(h, w)`` one temporal cell's map.

    Returns:
        ``(height, width)`` float in [0, 1] (all zeros for a constant map).
    """
    cell = cell.detach().float().cpu()
    span = cell.max() - cell.min()
    normalised = (cell - cell.min()) / span if span > 0 else torch.zeros_like(cell)
    big = F.interpolate(normalised[None, None], size=(height, width), mode="bilinear", align_corners=False)
    return big[0, 0].clamp(0, 1).numpy()


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a mask.

    Args:
        mask: ``(H, W)`` bool.

    Returns:
        ``(H, W)`` bool, pixels of the mask with a 4-neighbour outside it (or on the border).
    """
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _with_outline(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return image
    out = image.copy()
    out[outline(mask.astype(bool))] = OUTLINE_RGB
    return out


def overlay(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend a colourised heatmap over a frame.

    Args:
        frame: ``(H, W, 3)`` uint8.
        heat: ``(H, W)`` float in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8.
    """
    blended = (1 - alpha) * frame.astype(np.float64) + alpha * colorize(heat).astype(np.float64)
    return blended.round().clip(0, 255).astype(np.uint8)


def heatmap_figure(
    frames: np.ndarray,
    masks: Sequence[np.ndarray | None],
    rows: Sequence[HeatmapRow],
    *,
    title: str,
    frame_labels: Sequence[str] | None = None,
) -> Image.Image:
    """The grid figure described in the module doc.

    Args:
        frames: ``(F, H, W, 3)`` uint8 sampled frames, ``F = 2 T``.
        masks: per frame a ``(H, W)`` bool ground-truth mask, or ``None`` where not annotated.
        rows: the models' maps, each ``cells`` ``(T, h, w)``.
        title: drawn above the grid (e.g. sample id and phrase).
        frame_labels: a caption per column (default ``frame <i>``).
    """
    num_frames, height, width, _ = frames.shape
    if len(masks) != num_frames:
        raise ValueError(f"{len(masks)} masks for {num_frames} frames")
    for row in rows:
        if row.cells.shape[0] * 2 != num_frames:
            raise ValueError(
                f"row {row.label!r}: {row.cells.shape[0]} cells for {num_frames} frames (expected F/2)"
            )
    labels = list(frame_labels) if frame_labels is not None else [f"frame {i}" for i in range(num_frames)]
    first = "frames + ground truth" if any(mask is not None for mask in masks) else "frames"
    grid_rows = [(first, [_with_outline(frames[i], masks[i]) for i in range(num_frames)])]
    for row in rows:
        heats = [upsample(row.cells[t], height, width) for t in range(row.cells.shape[0])]
        panels = [_with_outline(overlay(frames[i], heats[i // 2]), masks[i]) for i in range(num_frames)]
        grid_rows.append((row.label, panels))
    canvas = Image.new(
        "RGB",
        (LABEL_WIDTH + num_frames * width, LABEL_HEIGHT * 2 + len(grid_rows) * height),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=11)
    draw.text((4, 1), title, fill=(0, 0, 0), font=font)
    for column, label in enumerate(labels):
        draw.text((LABEL_WIDTH + column * width + 2, LABEL_HEIGHT + 1), label, fill=(0, 0, 0), font=font)
    for r, (label, panels) in enumerate(grid_rows):
        top = LABEL_HEIGHT * 2 + r * height
        draw.text((4, top + height // 2 - 6), label[:24], fill=(0, 0, 0), font=font)
        for column, panel in enumerate(panels):
            canvas.paste(Image.fromarray(panel), (LABEL_WIDTH + column * width, top))
    return canvas


def save_figure(image: Image.Image, folder: str | Path, name: str) -> Path:
    """Save ``image`` as ``folder/name.png`` (name made filesystem-safe); returns the path."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = Path(folder) / f"{safe}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
