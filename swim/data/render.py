"""Contact sheets of what a sample shows: sampled frames, ground-truth masks and tagged phrases.

The data doctor (``python -m swim.data.inspect --render N --out DIR``) draws them; each PNG shows
the frames a sample really uses, after resizing, with each instance's masks tinted in its colour.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from swim.data.mixture import Mixture
from swim.data.schema import SampleError

INSTANCE_COLOURS = ((0, 255, 255), (255, 0, 255), (255, 255, 0), (255, 255, 255))


def spread(indices: range, limit: int | None) -> list[int]:
    """``limit`` indices evenly spread over ``indices`` (all of them without a limit)."""
    if limit is None or limit >= len(indices):
        return list(indices)
    return sorted({indices[int(k)] for k in np.linspace(0, len(indices) - 1, limit)})


def render_samples(
    mixture: Mixture, builder: Any, count: int, out: Path, prefix: str
) -> list[dict[str, str]]:
    """Draw ``count`` samples spread over ``mixture`` into ``out/<prefix>_<k>.png``.

    Returns:
        Per sample its record id and either the ``png`` path or the ``error`` that stopped it.
    """
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for k, i in enumerate(spread(range(len(mixture)), count)):
        record = mixture[i]
        try:
            visual = builder.load_visual(record)
        except SampleError as err:
            done.append({"id": record.id, "error": str(err.rejection)})
            continue
        path = out / f"{prefix}_{k:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', record.id)[-60:]}.png"
        draw_visual(visual, f"{record.source} #{record.index} {record.id}").save(path)
        done.append({"id": record.id, "png": str(path)})
    return done


def draw_visual(visual: Any, title: str, columns: int = 8, tile_height: int = 160) -> Image.Image:
    """A contact sheet of a :class:`swim.data.sample.VisualSample`.

    Sampled frames ``(F, H, W, 3)`` in a grid, each instance's mask tinted and outlined in its colour,
    labelled with the frame index (``*`` marks annotated frames); the header lists the tagged
    phrases and the instance each refers to. Tiles are scaled to ``tile_height`` pixels.
    """
    lines = [title]
    for phrase, instance in zip(visual.phrases, visual.phrase_instance, strict=True):
        lines.append(f'"{phrase}" -> ' + ("no instance" if instance is None else f"instance {instance}"))
    if visual.frames is None:
        lines.append("(text only)")
        frames = np.zeros((1, 28, 28, 3), dtype=np.uint8)
    else:
        frames = visual.frames.astype(np.float32)
        for j, masks in enumerate(visual.masks):
            colour = np.array(INSTANCE_COLOURS[j % len(INSTANCE_COLOURS)], dtype=np.float32)
            frames[masks] = 0.6 * frames[masks] + 0.4 * colour
            frames[_outline(masks)] = colour
        frames = frames.round().astype(np.uint8)
    count, height, width = frames.shape[:3]
    size = (max(1, round(width * tile_height / height)), tile_height)
    cols = min(columns, count)
    rows = -(-count // cols)
    header = 14 * len(lines) + 6
    sheet = Image.new("RGB", (max(cols * (size[0] + 4), 480), header + rows * (size[1] + 18)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for n, line in enumerate(lines):
        draw.text((4, 3 + 14 * n), line, fill=(235, 235, 235))
    for k in range(count):
        x, y = (k % cols) * (size[0] + 4), header + (k // cols) * (size[1] + 18)
        sheet.paste(Image.fromarray(frames[k]).resize(size, Image.Resampling.BILINEAR), (x, y + 14))
        index = visual.frame_indices[k] if k < len(visual.frame_indices) else k
        marked = any(flags[k] for flags in visual.annotated)
        draw.text((x + 2, y + 1), f"f{index}{' *' if marked else ''}", fill=(200, 200, 200))
    return sheet


def _outline(masks: np.ndarray, width: int = 2) -> np.ndarray:
    """``(F, H, W)`` bool: mask pixels within ``width`` pixels of the mask's border."""
    inner = masks.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[:, 1:, :] &= inner[:, :-1, :]
        shrunk[:, :-1, :] &= inner[:, 1:, :]
        shrunk[:, :, 1:] &= inner[:, :, :-1]
        shrunk[:, :, :-1] &= inner[:, :, 1:]
        inner = shrunk
    return masks & ~inner
