"""Multimodal rotary (MRoPE) positions of one sample, as the Qwen2-VL / Qwen2.5-VL / Qwen3-VL models
compute them.

A packed row holds several samples; each keeps the positions it would have alone, so the collator
computes them per sample here (the data layer cannot call the model). The rule is that of the
models' ``get_rope_index``, checked against it in ``tests/test_packing.py``:

- a run of ``n`` text tokens takes positions ``p, ..., p + n - 1`` on all three axes;
- a visual run of grid ``(T, 2h, 2w)`` patches (``h x w`` tokens per temporal cell) starting at
  ``p`` takes ``(p + floor(t * interval), p + i, p + j)`` for token ``(t, i, j)``, with
  ``interval = tokens_per_second * seconds_per_cell`` for a Qwen2.5-VL video and 1 otherwise
  (images, Qwen2-VL); the next run starts at ``p + max(h, w)``;
- Qwen3-VL (``MRope.cell_runs``, the ``timestamped`` layout): a video's ``T`` temporal cells are
  ``T`` separate runs (a timestamp and the vision markers, text, lie between them), each placed as
  a one-cell grid ``(1, 2h, 2w)`` like an image; time is carried by the timestamp text only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

TEXT, IMAGE, VIDEO = 0, 1, 2


@dataclass(frozen=True)
class MRope:
    """What the MRoPE positions of a family depend on (read from the model's config).

    Attributes:
        merge_size: patches merged per token side (``vision_config.spatial_merge_size``).
        tokens_per_second: temporal positions per second of video (Qwen2.5-VL's
            ``vision_config.tokens_per_second``); ``None``: one position per temporal cell (Qwen2-VL).
        cell_runs: each temporal cell of a video is its own visual run with grid ``(1, 2h, 2w)``
            (Qwen3-VL, whose ``get_rope_index`` splits ``video_grid_thw`` so), with
            ``tokens_per_second=None``.
    """

    merge_size: int
    tokens_per_second: float | None
    cell_runs: bool = False

    def __post_init__(self) -> None:
        if self.cell_runs and self.tokens_per_second is not None:
            raise ValueError(
                "MRope: cell_runs has no temporal interval within a run; expected tokens_per_second=None"
            )


def _runs(types: Tensor) -> Iterator[tuple[int, int, int]]:
    """``(modality, start, end)`` of each maximal run of equal entries of ``(L,)`` ``types``."""
    start = 0
    for modality, group in itertools.groupby(types.tolist()):
        length = len(list(group))
        yield modality, start, start + length
        start += length


def mrope_positions(
    mm_token_type_ids: Tensor,
    rope: MRope,
    video_grid_thw: Tensor | None = None,
    image_grid_thw: Tensor | None = None,
    second_per_grid_ts: Tensor | None = None,
) -> Tensor:
    """The ``(3, L)`` long temporal / height / width positions of one unpadded sample.

    Args:
        mm_token_type_ids: ``(L,)`` modality of each token (0 text, 1 image, 2 video).
        rope: the family's MRoPE parameters.
        video_grid_thw: ``(V, 3)`` patch grids of the sample's videos, in order.
        image_grid_thw: ``(I, 3)`` patch grids of its images, in order.
        second_per_grid_ts: ``(V,)`` seconds per temporal cell of each video.
    """
    if video_grid_thw is not None and rope.cell_runs:
        video_grid_thw = torch.repeat_interleave(video_grid_thw, video_grid_thw[:, 0], dim=0)
        video_grid_thw[:, 0] = 1
    grids = {
        IMAGE: iter(image_grid_thw if image_grid_thw is not None else []),
        VIDEO: iter(video_grid_thw if video_grid_thw is not None else []),
    }
    seconds = iter(second_per_grid_ts if second_per_grid_ts is not None else [])
    parts: list[Tensor] = []
    current = 0
    for modality, start, end in _runs(mm_token_type_ids):
        if modality == TEXT:
            parts.append(torch.arange(current, current + end - start).expand(3, -1))
            current += end - start
            continue
        grid = next(grids[modality], None)
        if grid is None:
            raise ValueError(f"a {'video' if modality == VIDEO else 'image'} run at {start} has no grid")
        steps, height, width = int(grid[0]), int(grid[1]) // rope.merge_size, int(grid[2]) // rope.merge_size
        if steps * height * width != end - start:
            raise ValueError(
                f"the visual run [{start}, {end}) has {end - start} tokens, its grid {grid.tolist()} "
                f"gives {steps * height * width}"
            )
        interval: float | Tensor = 1.0
        if modality == VIDEO and rope.tokens_per_second is not None:
            # a float32 product, as the model's own (``tokens_per_second * second_per_grid_ts[v]``)
            interval = rope.tokens_per_second * next(seconds, torch.tensor(1.0))
        t = (torch.arange(steps) * interval).long() + current
        i = torch.arange(height) + current
        j = torch.arange(width) + current
        grid_t, grid_i, grid_j = torch.meshgrid(t, i, j, indexing="ij")
        parts.append(torch.stack([grid_t, grid_i, grid_j]).reshape(3, -1))
        current += max(height, width)
    if not parts:
        return torch.zeros(3, 0, dtype=torch.long)
    return torch.cat(parts, dim=1).long()
