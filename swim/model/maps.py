"""Snapshots of validation attention maps per sample, for heatmap plots.

The probe's maps are ``(R, K)``: row ``r``'s probabilities over its sample's visual tokens, padded
to the batch's largest visual span ``K``. A row's first ``T*h*w`` entries are its sample's token
grid ``(T, h, w)``, temporal-cell-major then row-major (see :mod:`swim.data.batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from swim.data.batch import Supervision, SwimBatch


def row_grid(row_map: Tensor, grid: Tensor) -> Tensor:
    """One row's map as its sample's token grid.

    Args:
        row_map: ``(K,)`` the row's map, padded beyond the sample's ``T*h*w`` visual tokens.
        grid: ``(3,)`` long, the sample's ``(T, h, w)``.

    Returns:
        ``(T, h, w)`` view of the first ``T*h*w`` entries.
    """
    t, h, w = (int(v) for v in grid)
    return row_map[: t * h * w].view(t, h, w)


@dataclass
class RowHeatmap:
    """One supervised row's fused map, for plots.

    Attributes:
        token_id: vocabulary id of the tagged token (decode it to label the plot).
        token_position: the tagged token's sequence position.
        phrase: index of the row's tagged phrase within its sample (order of first row).
        instance: index of the row's instance within its sample.
        fused: ``(T, h, w)`` fp32, the fused map over the sample's visual tokens.
        cell_masks: ``(T, h, w)`` the instance's ground truth per temporal cell.
        cell_valid: ``(T,)`` bool, which cells carry ground truth.
    """

    token_id: int
    token_position: int
    phrase: int
    instance: int
    fused: Tensor
    cell_masks: Tensor
    cell_valid: Tensor


@dataclass
class SampleHeatmaps:
    """Fused maps of one validation sample's supervised rows (detached, on the CPU).

    Attributes:
        sample_id: the record id (``SwimBatch.sample_ids``).
        grid: the sample's token grid ``(T, h, w)``.
        rows: one entry per supervised row, in sequence order.
        frames: ``(T, H, W, 3)`` uint8, the first frame of each temporal cell as the model saw it
            (:func:`cell_frames`), or ``None`` (an image sample, or no pixels at hand).
    """

    sample_id: str
    grid: tuple[int, int, int]
    rows: list[RowHeatmap]
    frames: np.ndarray | None = None


def cell_frames(
    pixel_values_videos: Tensor,
    video_grid_thw: Tensor,
    video: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> np.ndarray:
    """The first frame of each temporal cell of one video of a batch, undoing Qwen's patchify.

    The video processor lays a video out as ``(t, h/m, w/m, m, m, C, tp, p, p)`` flattened to
    ``(t*h*w, C*tp*p*p)`` and normalised with ``mean`` and ``std``; this inverts both.

    Args:
        pixel_values_videos: ``(P, C*tp*p*p)`` the batch's video patches, videos one after another.
        video_grid_thw: ``(V, 3)`` long, each video's patch grid ``(t, h, w)``.
        video: which video of the batch.
        mean, std: the processor's per-channel normalisation.

    Returns:
        ``(t, h*p, w*p, 3)`` uint8 RGB.
    """
    grids = [tuple(int(v) for v in row) for row in video_grid_thw.tolist()]
    start = sum(t * h * w for t, h, w in grids[:video])
    t, h, w = grids[video]
    flat = pixel_values_videos[start : start + t * h * w].detach().float().cpu()
    p, m, tp = patch_size, merge_size, temporal_patch_size
    channels = flat.shape[1] // (tp * p * p)
    patches = flat.view(t, h // m, w // m, m, m, channels, tp, p, p)
    frames = patches.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t, tp, channels, h * p, w * p)[:, 0]
    frames = frames * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def sample_frames(batch: SwimBatch, sample: int, video_token_id: int, processor: Any) -> np.ndarray | None:
    """One sample's cell frames from its batch's video pixels (:func:`cell_frames`).

    Args:
        batch: the collated batch (one video at most per sample, in sample order).
        sample: batch index of the sample.
        video_token_id: the model's video placeholder token.
        processor: the Qwen processor (its video processor's normalisation and patch geometry), or
            ``None``.

    Returns:
        ``(T, H, W, 3)`` uint8, or ``None`` for a sample without video (or without a processor).
    """
    if batch.pixel_values_videos is None or batch.video_grid_thw is None or processor is None:
        return None
    has_video = (batch.input_ids == video_token_id).any(dim=1)
    if not bool(has_video[sample]):
        return None
    video = processor.video_processor
    return cell_frames(
        batch.pixel_values_videos,
        batch.video_grid_thw,
        int(has_video[:sample].sum()),
        video.image_mean,
        video.image_std,
        patch_size=video.patch_size,
        merge_size=video.merge_size,
        temporal_patch_size=video.temporal_patch_size,
    )


def sample_heatmaps(
    fused: Tensor,
    supervision: Supervision,
    input_ids: Tensor,
    sample: int,
    sample_id: str,
    frames: np.ndarray | None = None,
) -> SampleHeatmaps:
    """A detached CPU snapshot of one sample's fused maps.

    Args:
        fused: ``(R, K)`` the batch's fused maps.
        supervision: the batch's supervision (``R`` rows).
        input_ids: ``(B, L)`` the batch's token ids.
        sample: batch index of the sample.
        sample_id: its record id.
        frames: the sample's cell frames (:func:`cell_frames`), or ``None``.
    """
    rows = (supervision.row_sample == sample).nonzero().flatten()
    rows = rows[torch.argsort(supervision.row_token[rows], stable=True)]
    phrase_order: dict[int, int] = {}
    instance_order: dict[int, int] = {}
    sample_instances = (supervision.instance_sample == sample).nonzero().flatten().tolist()
    for local, instance in enumerate(sample_instances):
        instance_order[instance] = local
    grid = supervision.grid[sample]
    entries = []
    for row in rows.tolist():
        phrase = phrase_order.setdefault(int(supervision.row_phrase[row]), len(phrase_order))
        instance = int(supervision.row_instance[row])
        position = int(supervision.row_token[row])
        entries.append(
            RowHeatmap(
                token_id=int(input_ids[sample, position]),
                token_position=position,
                phrase=phrase,
                instance=instance_order[instance],
                fused=row_grid(fused[row], grid).detach().float().cpu(),
                cell_masks=supervision.cell_masks[instance].detach().float().cpu(),
                cell_valid=supervision.cell_valid[instance].detach().cpu(),
            )
        )
    t, h, w = (int(v) for v in grid)
    return SampleHeatmaps(sample_id=sample_id, grid=(t, h, w), rows=entries, frames=frames)
