"""Segmentations to masks: decoding COCO RLE / polygons, and ground truth per visual-token cell.

An instance's annotation maps frame indices to segmentations. A sample uses only its sampled
frames, so only those are decoded (:func:`decoded_mask_count` counts decodes, for tests).

Ground truth of temporal cell ``t`` (sampled frames ``2t`` and ``2t+1``) is the union of the masks
of whichever of its two frames are annotated; any frame index counts, frame 0 included. Masks
are resized to the resized frame size with pixel-centre nearest neighbour (each output pixel takes
the input pixel under its centre, so a union of resized masks equals the resized union), then
area-downsampled to the token grid: each cell value is the covered fraction of its ``cell x cell``
block (the family's token side: 28 px, 32 for Qwen3-VL).
A cell with no annotated frame is invalid and all zeros.

A mask that decodes with no pixel set (an all-zero RLE, a polygon entirely outside the frame) is
not ground truth: :func:`decode_frame_masks` leaves its frame out, as if unannotated, and counts it
as ``mask_dropped/empty``. An instance left with no valid cell then supervises nothing (its tags
count as ``tag_dropped/no_valid_cell``), so a record with only empty masks trains on CE alone.

Errors raise :class:`~swim.data.schema.SampleError` with reasons ``bad_rle`` (undecodable
segmentation: junk counts, runs that do not sum to ``h * w``, malformed polygons),
``mask_size_mismatch`` (RLE size differs from the video's), ``frame_out_of_range`` and
``bad_frame_index`` (a frame key that is not a non-negative integer).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from swim.data.schema import Rejection, SampleError

CELL = 28
"""Pixels per side of one LLM visual token by default (Qwen2/2.5-VL)."""

_STATS = {"decoded": 0}


def decoded_mask_count() -> int:
    """How many segmentations this process has decoded so far (a test hook; never reset)."""
    return _STATS["decoded"]


def _error(file: str, index: int, field: str, reason: str, detail: str) -> SampleError:
    return SampleError(Rejection(file, index, field, reason, detail))


def compressed_counts(counts: str | bytes) -> list[int]:
    """Run lengths of a COCO compressed RLE string, checked character by character.

    The format stores each run as 5-bit groups in characters ``'0'`` .. ``'o'`` (bit 0x20: more
    groups follow; bit 0x10 of the last group: negative), and runs after the third as differences
    from the run two places before.

    Raises:
        ValueError: a character outside the alphabet, a truncated run, or a negative run.
    """
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError(f"the string ends inside run {len(runs)}")
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {text[position]!r} at {position} is not an RLE character")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError(f"run {len(runs)} is negative ({value})")
        runs.append(value)
    return runs


def _checked_runs(runs: Sequence[Any], height: int, width: int) -> None:
    if not all(isinstance(r, (int, np.integer)) and not isinstance(r, bool) and r >= 0 for r in runs):
        raise ValueError("counts must be non-negative integers")
    total = sum(int(r) for r in runs)
    if total != height * width:
        raise ValueError(f"runs sum to {total}, expected height * width = {height * width}")


def _polygons(seg: list[Any]) -> list[list[float]]:
    if not seg:
        raise ValueError("empty polygon list")
    polygons = [seg] if all(isinstance(v, (int, float)) for v in seg) else seg
    for k, polygon in enumerate(polygons):
        if not isinstance(polygon, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon
        ):
            raise ValueError(f"polygon {k} is not a list of numbers")
        if len(polygon) < 6 or len(polygon) % 2:
            raise ValueError(f"polygon {k} has {len(polygon)} coordinates, expected an even count >= 6")
        if not all(math.isfinite(v) for v in polygon):
            raise ValueError(f"polygon {k} has a non-finite coordinate")
    return [[float(v) for v in polygon] for polygon in polygons]


def _to_rle(seg: Any, height: int, width: int, where: tuple[str, int, str]) -> dict[str, Any]:
    """A validated compressed RLE of ``seg`` (RLE dict or polygons) at ``height x width``."""
    if isinstance(seg, list):
        rles = mask_utils.frPyObjects(_polygons(seg), height, width)
        return mask_utils.merge(rles)
    if not isinstance(seg, Mapping) or "counts" not in seg or "size" not in seg:
        raise ValueError(
            f"expected an RLE {{'size': [h, w], 'counts': ...}} or polygons, got {type(seg).__name__}"
        )
    size = seg["size"]
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        raise ValueError(f"size must be [height, width] integers, got {size!r}")
    if tuple(size) != (height, width):
        file, index, field = where
        raise _error(
            file, index, field, "mask_size_mismatch", f"RLE size {list(size)}, video is [{height}, {width}]"
        )
    counts = seg["counts"]
    if isinstance(counts, (str, bytes)):
        _checked_runs(compressed_counts(counts), height, width)
        return {
            "size": [height, width],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
        }
    if isinstance(counts, list):
        _checked_runs(counts, height, width)
        return mask_utils.frPyObjects(
            {"size": [height, width], "counts": [int(c) for c in counts]}, height, width
        )
    raise ValueError(f"counts must be a string or a list of integers, got {type(counts).__name__}")


def decode_segmentation(
    seg: Any, height: int, width: int, *, file: str = "?", index: int = -1, field: str = "annotation"
) -> np.ndarray:
    """Decode one segmentation at the video's size.

    Args:
        seg: COCO RLE ``{"size": [h, w], "counts": str | bytes | list[int]}`` (compressed or
            uncompressed counts), polygons ``[[x1, y1, x2, y2, ...], ...]`` (one flat list is one
            polygon), or either wrapped as ``{"segmentation": ...}``.
        height, width: the video's frame size; an RLE must have exactly this size.
        file, index, field: where the segmentation came from, for errors.

    Returns:
        ``(height, width)`` bool mask.

    Raises:
        SampleError: ``mask_size_mismatch`` or ``bad_rle``.
    """
    if isinstance(seg, Mapping) and "segmentation" in seg:
        seg = seg["segmentation"]
    try:
        rle = _to_rle(seg, height, width, (file, index, field))
        mask = mask_utils.decode(rle)
    except SampleError:
        raise
    except Exception as error:
        raise _error(file, index, field, "bad_rle", f"cannot decode the segmentation: {error}") from error
    _STATS["decoded"] += 1
    if mask.shape[:2] != (height, width):
        raise _error(file, index, field, "bad_rle", f"decoded to {mask.shape}, expected ({height}, {width})")
    return np.ascontiguousarray(mask.reshape(height, width).astype(bool))


def _frame_key(key: Any) -> int | None:
    """``key`` as a frame index (an int or a string of ASCII digits), or ``None``."""
    if isinstance(key, str):
        return int(key) if key.isascii() and key.isdigit() else None
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and key >= 0:
        return int(key)
    return None


def annotated_frames(
    instance: Mapping[Any, Any],
    *,
    num_frames: int | None = None,
    file: str = "?",
    index: int = -1,
    field: str = "annotation[0]",
) -> dict[int, Any]:
    """The instance's segmentations keyed by integer frame index (keys may be ints or digit strings).

    Raises:
        SampleError: ``bad_frame_index`` for a key that is not a non-negative integer or repeats
            one, ``frame_out_of_range`` for keys ``>= num_frames`` (when given; all are named).
    """
    frames: dict[int, Any] = {}
    for key, value in instance.items():
        frame = _frame_key(key)
        if frame is None:
            raise _error(file, index, f"{field}[{key!r}]", "bad_frame_index", "expected a frame index >= 0")
        if frame in frames:
            raise _error(file, index, f"{field}[{key!r}]", "bad_frame_index", f"frame {frame} appears twice")
        frames[frame] = value
    if num_frames is not None:
        outside = sorted(f for f in frames if f >= num_frames)
        if outside:
            raise _error(
                file,
                index,
                f'{field}["{outside[0]}"]',
                "frame_out_of_range",
                f"annotated frames {outside} but the video has {num_frames} frames",
            )
    return frames


def decode_frame_masks(
    instance: Mapping[Any, Any],
    frame_indices: Sequence[int],
    video_hw: tuple[int, int],
    *,
    num_frames: int | None = None,
    file: str = "?",
    index: int = -1,
    field: str = "annotation[0]",
    counters: Counter[str] | None = None,
) -> dict[int, np.ndarray]:
    """Decode the instance's masks on the sampled frames that are annotated (and only those).

    Args:
        instance: frame index -> segmentation (see :func:`decode_segmentation`).
        frame_indices: the sampled frames.
        video_hw: the video's ``(height, width)``.
        num_frames: the video's frame count; annotated frames beyond it raise ``frame_out_of_range``.
        counters: where ``mask_dropped/empty`` is counted, one per empty mask left out.

    Returns:
        frame index -> ``(height, width)`` bool mask, for each annotated sampled frame whose mask
        has at least one pixel set.
    """
    frames = annotated_frames(instance, num_frames=num_frames, file=file, index=index, field=field)
    height, width = video_hw
    masks = {}
    for f in sorted(set(frame_indices)):
        if f not in frames:
            continue
        mask = decode_segmentation(frames[f], height, width, file=file, index=index, field=f'{field}["{f}"]')
        if mask.any():
            masks[f] = mask
        elif counters is not None:
            counters["mask_dropped/empty"] += 1
    return masks


def resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel-centre nearest-neighbour resize: ``(h, w)`` bool -> ``(height, width)`` bool."""
    in_h, in_w = mask.shape
    rows = np.minimum(((np.arange(height) + 0.5) * in_h / height).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * in_w / width).astype(np.int64), in_w - 1)
    return mask.take(rows, axis=0).take(cols, axis=1)


def cell_area(pixel_masks: torch.Tensor, cell: int = CELL) -> torch.Tensor:
    """Area-downsample masks to the token grid: ``(T, H, W)`` -> ``(T, H/cell, W/cell)`` block means."""
    steps, height, width = pixel_masks.shape
    blocks = pixel_masks.float().reshape(steps, height // cell, cell, width // cell, cell)
    return blocks.mean(dim=(2, 4))


@dataclass
class InstanceMasks:
    """One instance's ground truth over a sample's temporal cells.

    Attributes:
        cell_masks: ``(T, h, w)`` float in [0, 1], fraction of each token cell covered by the mask.
        cell_valid: ``(T,)`` bool, whether the cell has ground truth under the cell rule.
        pixel_masks: ``(T, H, W)`` float in {0, 1} at the resized frame size (or the video's own
            size with ``mask_resolution="original"``), or ``None``.
    """

    cell_masks: torch.Tensor
    cell_valid: torch.Tensor
    pixel_masks: torch.Tensor | None


def instance_cell_masks(
    instance: Mapping[Any, Any],
    frame_indices: Sequence[int],
    video_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    *,
    pixel_masks: bool,
    cell_rule: str = "union",
    mask_resolution: str = "frame",
    num_frames: int | None = None,
    decoded: Mapping[int, np.ndarray] | None = None,
    file: str = "?",
    index: int = -1,
    field: str = "annotation[0]",
    counters: Counter[str] | None = None,
    cell: int = CELL,
) -> InstanceMasks:
    """Ground truth of one instance per temporal cell, on the token grid (and optionally in pixels).

    Args:
        instance: frame index -> segmentation (``{"segmentation": ...}`` or the segmentation).
        frame_indices: the sampled frames, an even count; cell ``t`` is frames ``2t`` and ``2t + 1``.
        video_hw: the video's ``(height, width)``.
        resized_hw: the resized frame ``(H, W)``, multiples of ``cell``.
        pixel_masks: also return the ``(T, H, W)`` pixel masks.
        cell_rule: ``union`` (cell ``t`` is the union of its annotated frames ``2t``, ``2t+1``) or
            ``reference`` (frame ``2t+1`` if annotated, else frame 0 if annotated, else invalid).
        mask_resolution: pixel masks at the resized frame size (``frame``, ``(T, H, W)``) or at
            the video's own size (``original``, ``(T, *video_hw)``).
        num_frames: the video's frame count; annotated frames beyond it raise ``frame_out_of_range``.
        decoded: masks already decoded by :func:`decode_frame_masks` (not decoded again).
        file, index, field: where the annotation came from, for errors.
        counters: where :func:`decode_frame_masks` counts empty masks.
        cell: pixels per side of one visual token (the model family's ``token_px``).

    Returns:
        :class:`InstanceMasks` with ``T = len(frame_indices) / 2``, ``h, w = H / cell, W / cell``.

    Raises:
        ValueError: an odd or empty ``frame_indices``, or ``resized_hw`` not multiples of ``cell``.
        SampleError: ``bad_rle``, ``mask_size_mismatch``, ``frame_out_of_range``, ``bad_frame_index``.
    """
    if not frame_indices or len(frame_indices) % 2:
        raise ValueError(f"frame_indices must be a non-empty even-length list, got {len(frame_indices)}")
    out_h, out_w = resized_hw
    if out_h < cell or out_w < cell or out_h % cell or out_w % cell:
        raise ValueError(f"resized size {out_h}x{out_w} is not a positive multiple of {cell}")
    if decoded is None:
        decoded = decode_frame_masks(
            instance,
            frame_indices,
            video_hw,
            num_frames=num_frames,
            file=file,
            index=index,
            field=field,
            counters=counters,
        )
    else:
        frames = annotated_frames(instance, num_frames=num_frames, file=file, index=index, field=field)
        missing = sorted(f for f in set(frame_indices) if f in frames and f not in decoded)
        if missing:
            raise ValueError(f"decoded masks lack annotated sampled frames {missing}")

    steps = len(frame_indices) // 2
    cell_frames = [
        cell_mask_frames(frame_indices[2 * t : 2 * t + 2], decoded, cell_rule) for t in range(steps)
    ]
    union = np.zeros((steps, out_h, out_w), dtype=bool)
    resized: dict[int, np.ndarray] = {}
    for t, frames in enumerate(cell_frames):
        for frame in frames:
            if frame not in resized:
                resized[frame] = resize_mask_nearest(decoded[frame], out_h, out_w)
            union[t] |= resized[frame]
    valid = torch.tensor([bool(frames) for frames in cell_frames], dtype=torch.bool)
    pixels = torch.from_numpy(union)
    if pixel_masks and mask_resolution == "original":
        original = np.zeros((steps, *video_hw), dtype=bool)
        for t, frames in enumerate(cell_frames):
            for frame in frames:
                original[t] |= decoded[frame].astype(bool)
        pixel = torch.from_numpy(original).float()
    elif mask_resolution not in ("frame", "original"):
        raise ValueError(f"mask_resolution={mask_resolution!r}: expected 'frame' or 'original'")
    else:
        pixel = pixels.float()
    return InstanceMasks(
        cell_masks=cell_area(pixels, cell), cell_valid=valid, pixel_masks=pixel if pixel_masks else None
    )


def cell_mask_frames(pair: Sequence[int], decoded: Mapping[int, Any], cell_rule: str) -> list[int]:
    """The annotated frames whose masks form one temporal cell's ground truth.

    Args:
        pair: the cell's two sampled frame indices ``(2t, 2t+1)``.
        decoded: the instance's masks by frame index (annotated sampled frames only).
        cell_rule: ``union`` (every annotated frame of the pair) or ``reference`` (the reference's
            rule: the second frame if annotated, else frame 0 if annotated, else none).

    Returns:
        Distinct frame indices, possibly none (an invalid cell).
    """
    if cell_rule == "union":
        return [frame for frame in dict.fromkeys(pair) if frame in decoded]
    if cell_rule == "reference":
        sentinel = pair[-1] if pair[-1] in decoded else 0
        return [sentinel] if sentinel in decoded else []
    raise ValueError(f"cell_rule={cell_rule!r}: expected 'union' or 'reference'")
