"""Which frames of a video a sample uses, and at what resolution.

Frame sampling follows the reference recipe (METHOD.md section 2): every annotated frame that
exists in the video is kept, the remaining budget is filled uniformly over the video, and the count
is made even because Qwen2.5-VL merges two consecutive sampled frames into one temporal cell.

Resolution follows Qwen's ``smart_resize`` for videos (qwen-vl-utils ``fetch_video``): both sides
become multiples of 28 px, the aspect ratio is kept as closely as possible, and the pixels per frame
lie between ``min_pixels`` and a cap derived from a total budget over all frames.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Iterable

import numpy as np

logger = logging.getLogger(__name__)

FRAME_FACTOR = 2
"""Qwen2.5-VL's temporal patch: two consecutive sampled frames make one temporal cell."""

SPATIAL_FACTOR = 28
"""Pixels per side of one LLM visual token (patch 14 x spatial merge 2)."""

VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)
"""qwen-vl-utils' default total pixel budget of one video (``VIDEO_MAX_PIXELS`` environment
variable there; releases up to 0.0.8 used ``24576 * 28 * 28``)."""

MAX_ASPECT_RATIO = 200


def sample_frame_indices(num_frames: int, annotated: Iterable[int], max_frames: int = 32) -> list[int]:
    """Choose the frames of a video that a sample uses.

    Rules, in order:

    1. Every annotated frame is kept. If there are more annotated frames than the (even) budget,
       an evenly spread subset of them is kept instead (first and last included) and the others
       are logged at debug level; the caller sees which by comparing with its input.
    2. The rest is the uniform grid ``linspace(0, num_frames - 1, budget)`` (rounded, the
       budget being ``max_frames`` rounded down to even) with, for each annotated frame, the grid
       point nearest to it removed; so with no annotation the result is exactly that grid, and
       the filled frames never repeat an annotated one.
    3. The result is sorted and has no duplicates, with one exception: a video of at most
       ``max_frames`` frames uses all of them, and if their number is odd (a 1-frame video is the
       smallest case) no unused frame is left to make the count even, so the last frame is
       repeated, as Qwen's processor pads a video itself.

    Args:
        num_frames: frames in the video, ``>= 1``.
        annotated: frame indices with a mask; duplicates are ignored.
        max_frames: the frame budget, ``>= 2``; an odd budget is rounded down.

    Returns:
        The sampled frame indices, ascending, an even count of at most ``max_frames``.

    Raises:
        ValueError: ``num_frames < 1``, ``max_frames < 2``, or annotated indices outside
            ``[0, num_frames)`` (all such indices are named).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if max_frames < FRAME_FACTOR:
        raise ValueError(f"max_frames must be >= {FRAME_FACTOR}, got {max_frames}")
    keep = sorted({operator.index(i) for i in annotated})
    outside = [i for i in keep if i < 0 or i >= num_frames]
    if outside:
        raise ValueError(f"annotated frame indices {outside} are outside the video's {num_frames} frames")
    budget = max_frames - max_frames % FRAME_FACTOR

    if len(keep) > budget:
        chosen = [keep[round(p)] for p in np.linspace(0, len(keep) - 1, budget)]
        logger.debug("%d annotated frames exceed max_frames=%d; kept %s", len(keep), max_frames, chosen)
        return chosen

    if num_frames <= budget:
        frames = list(range(num_frames))
        # An odd-length video has no unused frame left: repeat the last one, as Qwen's processor would.
        return frames + frames[-1:] if num_frames % FRAME_FACTOR else frames

    grid = [round(p) for p in np.linspace(0, num_frames - 1, budget)]
    for frame in keep:
        nearest = min(range(len(grid)), key=lambda j: abs(grid[j] - frame))
        del grid[nearest]
    return sorted([*keep, *grid])


def _round_by_factor(value: float, factor: int) -> int:
    return round(value / factor) * factor


def _floor_by_factor(value: float, factor: int) -> int:
    return math.floor(value / factor) * factor


def _ceil_by_factor(value: float, factor: int) -> int:
    return math.ceil(value / factor) * factor


def frame_pixel_cap(
    num_frames: int,
    *,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    total_pixels: int = VIDEO_TOTAL_PIXELS,
) -> int:
    """Most pixels one frame may have: ``max(min(max_pixels, total_pixels / F * 2), 1.05 * min_pixels)``.

    The factor 2 is Qwen's: the total budget counts temporal cells of two frames, not frames.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return int(max(min(max_pixels, total_pixels / num_frames * FRAME_FACTOR), int(min_pixels * 1.05)))


def fit_resolution(
    height: int,
    width: int,
    num_frames: int,
    *,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    total_pixels: int = VIDEO_TOTAL_PIXELS,
    factor: int = SPATIAL_FACTOR,
) -> tuple[int, int]:
    """The frame size a video of ``height x width`` is resized to, as Qwen's ``smart_resize`` does.

    Each side is rounded to a multiple of ``factor``; if the frame then has more pixels than
    :func:`frame_pixel_cap`, both sides are scaled down by the same factor and floored to multiples
    of ``factor`` (at least ``factor``); if fewer than ``min_pixels``, scaled up and ceiled. As in
    Qwen, ceiling can overshoot the cap by less than one ``factor`` step per side when the cap is
    close to ``min_pixels`` (many frames), and flooring can undershoot ``min_pixels`` likewise.

    Args:
        height, width: the video's frame size in pixels.
        num_frames: the number of sampled frames (the total budget is shared among them).
        min_pixels, max_pixels: per-frame bounds (Qwen2.5-VL video defaults: 128 and 768 tokens).
        total_pixels: pixel budget of the whole video.
        factor: the side multiple, the family's token side (28 Qwen2/2.5-VL, 32 Qwen3-VL).

    Returns:
        ``(resized_height, resized_width)``, both multiples of ``factor``.

    Raises:
        ValueError: non-positive sizes, or an aspect ratio above 200 (Qwen's limit).
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds {MAX_ASPECT_RATIO}")
    cap = frame_pixel_cap(num_frames, min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total_pixels)
    h_bar = max(factor, _round_by_factor(height, factor))
    w_bar = max(factor, _round_by_factor(width, factor))
    if h_bar * w_bar > cap:
        beta = math.sqrt(height * width / cap)
        h_bar = max(factor, _floor_by_factor(height / beta, factor))
        w_bar = max(factor, _floor_by_factor(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil_by_factor(height * beta, factor)
        w_bar = _ceil_by_factor(width * beta, factor)
    return h_bar, w_bar
