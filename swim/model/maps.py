"""Snapshots of validation attention maps per sample, for heatmap plots.

The probe's maps are ``(R, K)``: row ``r``'s probabilities over its sample's visual tokens, padded
to the batch's largest visual span ``K``. A row's first ``T*h*w`` entries are its sample's token
grid ``(T, h, w)``, temporal-cell-major then row-major (see :mod:`swim.data.batch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from swim.data.batch import Supervision


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
    """

    sample_id: str
    grid: tuple[int, int, int]
    rows: list[RowHeatmap]


def sample_heatmaps(
    fused: Tensor, supervision: Supervision, input_ids: Tensor, sample: int, sample_id: str
) -> SampleHeatmaps:
    """A detached CPU snapshot of one sample's fused maps.

    Args:
        fused: ``(R, K)`` the batch's fused maps.
        supervision: the batch's supervision (``R`` rows).
        input_ids: ``(B, L)`` the batch's token ids.
        sample: batch index of the sample.
        sample_id: its record id.
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
    return SampleHeatmaps(sample_id=sample_id, grid=(t, h, w), rows=entries)
