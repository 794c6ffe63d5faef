"""(row, temporal cell) pairs of a batch's supervision, grouped by token grid for vectorised losses.

A pair is a supervised row, its instance, and one temporal cell of that instance with ground
truth (``cell_valid``). Rows whose samples share a token grid ``(T, h, w)`` (and pixel-mask size)
form one :class:`PairGroup`, so every loss and metric runs as a few batched tensor operations:
Python loops run over groups and instances, never over cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from swim.data.batch import Supervision


@dataclass
class PairGroup:
    """The pairs of rows whose samples share one token grid.

    Attributes:
        grid: the token grid ``(T, h, w)`` of these rows' samples.
        rows: ``(P,)`` long, row index of each pair (into the batch's ``R`` rows).
        cells: ``(P,)`` long, temporal cell of each pair.
        instances: ``(P,)`` long, instance of each pair.
        cell_masks: ``(P, h, w)`` float, the cell's ground truth on the token grid.
        pixel_cells: ``(M, H, W)`` float, every cell of the group's instances at frame resolution
            (``M`` = instances x ``T``), or ``None``; pairs of one instance and cell share an entry.
        pixel_index: ``(P,)`` long, each pair's entry of ``pixel_cells``, or ``None``.
    """

    grid: tuple[int, int, int]
    rows: Tensor
    cells: Tensor
    instances: Tensor
    cell_masks: Tensor
    pixel_cells: Tensor | None = None
    pixel_index: Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return int(self.rows.numel())

    @property
    def pixel_masks(self) -> Tensor | None:
        """``(P, H, W)`` each pair's ground truth at frame resolution (a copy), or ``None``."""
        if self.pixel_cells is None or self.pixel_index is None:
            return None
        return self.pixel_cells[self.pixel_index]

    def gather(self, maps: Tensor) -> Tensor:
        """Each pair's cell of per-row visual maps.

        Args:
            maps: ``(..., R, K)`` maps over each row's visual keys (temporal-cell-major, row-major),
                ``K >= T*h*w``.

        Returns:
            ``(..., P, h, w)``: entries ``cell*h*w + arange(h*w)`` of each pair's row.
        """
        _, h, w = self.grid
        index = self.cells[:, None] * (h * w) + torch.arange(h * w, device=self.cells.device)[None, :]
        picked = maps[..., self.rows[:, None], index]
        return picked.reshape(*picked.shape[:-1], h, w)


def _check_instances(supervision: Supervision, with_pixel_masks: bool) -> None:
    num_instances = int(supervision.instance_sample.numel())
    if len(supervision.cell_masks) != num_instances or len(supervision.cell_valid) != num_instances:
        raise ValueError(
            f"supervision has {num_instances} instances but {len(supervision.cell_masks)} cell_masks and "
            f"{len(supervision.cell_valid)} cell_valid entries"
        )
    if (
        num_instances
        and with_pixel_masks
        and (supervision.pixel_masks is None or len(supervision.pixel_masks) != num_instances)
    ):
        raise ValueError(
            "loss.resize=pred_to_mask needs supervision.pixel_masks for every instance; "
            "ask the data pipeline for pixel masks or use loss.resize=mask_to_pred"
        )
    grids = supervision.grid.tolist()
    for index, sample in enumerate(supervision.instance_sample.tolist()):
        expected = tuple(grids[sample])
        if tuple(supervision.cell_masks[index].shape) != expected:
            raise ValueError(
                f"supervision instance {index} (sample {sample}): cell_masks has shape "
                f"{tuple(supervision.cell_masks[index].shape)}, expected the sample's token grid {expected}"
            )
        if tuple(supervision.cell_valid[index].shape) != expected[:1]:
            raise ValueError(
                f"supervision instance {index} (sample {sample}): cell_valid has shape "
                f"{tuple(supervision.cell_valid[index].shape)}, expected ({expected[0]},)"
            )
        if with_pixel_masks:
            pixel = supervision.pixel_masks[index]
            if pixel.dim() != 3 or pixel.shape[0] != expected[0] or pixel.shape[1:].numel() == 0:
                raise ValueError(
                    f"supervision instance {index} (sample {sample}): pixel_masks has shape "
                    f"{tuple(pixel.shape)}, "
                    f"expected ({expected[0]}, H, W) with H, W > 0"
                )


def pair_groups(supervision: Supervision, *, with_pixel_masks: bool = False) -> list[PairGroup]:
    """All (row, valid cell) pairs of a batch, grouped by token grid and pixel-mask size.

    Args:
        supervision: the batch's supervision (``R`` rows, ``N`` instances).
        with_pixel_masks: also gather the pairs' pixel masks (needs ``supervision.pixel_masks``).

    Returns:
        The groups with at least one pair; pairs are ordered by row, then cell, within a group.
    """
    num_rows = supervision.num_rows
    _check_instances(supervision, with_pixel_masks)
    if num_rows == 0:
        return []
    num_instances = int(supervision.instance_sample.numel())
    row_instance = supervision.row_instance
    bad = (row_instance < 0) | (row_instance >= num_instances)
    if bool(bad.any()):
        raise ValueError(
            f"supervision rows {bad.nonzero().flatten().tolist()} name instances outside "
            f"0..{num_instances - 1}"
        )
    mismatch = supervision.instance_sample[row_instance] != supervision.row_sample
    if bool(mismatch.any()):
        raise ValueError(
            f"supervision rows {mismatch.nonzero().flatten().tolist()} point at an instance of another sample"
        )

    row_grid = supervision.grid[supervision.row_sample]
    if with_pixel_masks:
        sizes = torch.tensor(
            [tuple(mask.shape[1:]) for mask in supervision.pixel_masks],
            dtype=torch.long,
            device=row_grid.device,
        )
        row_grid = torch.cat([row_grid, sizes[row_instance]], dim=1)
    keys, group_of_row = torch.unique(row_grid, dim=0, return_inverse=True)

    groups = []
    for group, key in enumerate(keys.tolist()):
        rows = (group_of_row == group).nonzero().flatten()
        instances, local = torch.unique(row_instance[rows], return_inverse=True)
        instance_list = instances.tolist()
        valid = torch.stack([supervision.cell_valid[i].bool() for i in instance_list])[local]
        pair_row, cells = valid.nonzero(as_tuple=True)
        if pair_row.numel() == 0:
            continue
        pair_local = local[pair_row]
        cell_masks = torch.stack([supervision.cell_masks[i] for i in instance_list])[pair_local, cells]
        pixel_cells = pixel_index = None
        if with_pixel_masks:
            pixel_cells = torch.cat([supervision.pixel_masks[i] for i in instance_list]).float()
            pixel_index = pair_local * key[0] + cells
        groups.append(
            PairGroup(
                grid=(key[0], key[1], key[2]),
                rows=rows[pair_row],
                cells=cells,
                instances=instances[pair_local],
                cell_masks=cell_masks.float(),
                pixel_cells=pixel_cells,
                pixel_index=pixel_index,
            )
        )
    return groups
