"""The SWIM attention-mask loss (METHOD.md section 4).

Per (row, valid temporal cell) pair, the fused map's ``(h, w)`` cell is normalised to a prediction
strictly inside (0, 1), brought to the mask's resolution and compared with the mask.

The normalisation (``loss.minmax``):

- ``exact`` (ours, the default): ``p = s + (1 - 2 s) * (x - min) / (max - min)`` with the squeeze
  ``s = loss.squeeze`` (default 1e-3). The min-max ratio is invariant to the map's scale (no
  absolute epsilon: a cell whose range is 1e-12 is normalised like one whose range is 1), and the
  affine squeeze keeps every prediction in ``[s, 1 - s]``, so BCE never meets its log clamp (-100)
  and its backward never divides by ``p (1 - p)`` near 0 (at most ``1 / (s (1 - s))``). Bilinear
  upsampling mixes predictions convexly and stays inside the same interval. A constant cell (no
  range) predicts 0.5 everywhere and passes no gradient.
- ``reference``: ``(x - min) / (max - min + 1e-6)``, the reference code's formula. Its epsilon is
  absolute: cells whose range is far below 1e-6 (six fused layers of a 7B model) are squashed to
  ~0, and exact zeros meet BCE's clamp. For reproducing the reference only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from swim.data.batch import Supervision
from swim.losses.config import LossConfig
from swim.losses.fusion import fuse_layers, upcast
from swim.losses.pairs import PairGroup, pair_groups
from swim.losses.resize import bilinear_resize

# Keeps the soft-IoU and Dice ratios finite when prediction and mask are both empty.
RATIO_EPS = 1e-6
# The reference code's absolute epsilon in the min-max denominator (``loss.minmax=reference``).
REFERENCE_MINMAX_EPS = 1e-6
# A constant cell's prediction under ``loss.minmax=exact``.
CONSTANT_CELL = 0.5
# Upsampled pixels per chunk of pairs in the pixel-resolution loss (4 MiB per fp32 temporary).
PIXEL_CHUNK = 1 << 20


@dataclass
class AttentionLossOutput:
    """The mask loss of a batch and what to log about it.

    Attributes:
        loss: scalar, the mean per-pair loss (0, still connected to the maps' graph, without pairs).
        num_pairs: number of (row, valid cell) pairs.
        fused: ``(R, K)`` the fused map of each row over its visual keys.
        per_layer_mass_in_mask: per supervised layer, the mean share of a pair's cell attention that
            falls inside the mask (detached scalars); empty without pairs.
        fused_mass_in_mask: the same for the fused map; ``None`` without pairs.
    """

    loss: Tensor
    num_pairs: int
    fused: Tensor
    per_layer_mass_in_mask: dict[int, Tensor] = field(default_factory=dict)
    fused_mass_in_mask: Tensor | None = None


def minmax_unit(maps: Tensor, constant: float = 0.0) -> Tensor:
    """``(x - min) / (max - min)`` of each map, in [0, 1], with no absolute epsilon.

    Args:
        maps: ``(P, h, w)``.
        constant: the value of a map without range (which then passes no gradient).

    Returns:
        ``(P, h, w)`` in the maps' dtype.
    """
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    flat = span <= 0
    unit = (maps - low) / torch.where(flat, torch.ones_like(span), span)
    return torch.where(flat, torch.full_like(unit, constant), unit)


def minmax_normalise(maps: Tensor, squeeze: float = 1e-3, mode: str = "exact") -> Tensor:
    """Normalise each map into (0, 1) by its own range (see the module docstring).

    Args:
        maps: ``(P, h, w)``.
        squeeze: ``s`` of the ``exact`` mode: predictions lie in ``[s, 1 - s]``; ``0 < s < 0.5``.
        mode: ``exact`` (scale-invariant, squeezed) or ``reference`` (``range + 1e-6``).

    Returns:
        ``(P, h, w)`` in the maps' dtype.
    """
    if mode == "reference":
        low = maps.amin(dim=(-2, -1), keepdim=True)
        span = maps.amax(dim=(-2, -1), keepdim=True) - low
        return (maps - low) / (span + REFERENCE_MINMAX_EPS)
    if mode != "exact":
        raise ValueError(f"loss.minmax={mode!r}: expected 'exact' or 'reference'")
    if not 0.0 < squeeze < 0.5:
        raise ValueError(f"loss.squeeze={squeeze}: expected 0 < squeeze < 0.5")
    return squeeze + (1.0 - 2.0 * squeeze) * minmax_unit(maps, CONSTANT_CELL)


def pair_losses(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Per-pair loss between predictions and masks of one size.

    Args:
        pred: ``(P, H, W)`` in [0, 1].
        target: ``(P, H, W)`` in [0, 1].
        kind: ``bce`` (mean binary cross-entropy over pixels),
            ``soft_iou`` (``1 - sum(pg) / (sum(p) + sum(g) - sum(pg))``) or
            ``dice`` (``1 - 2 sum(pg) / (sum(p) + sum(g))``).

    Returns:
        ``(P,)`` fp32.
    """
    pred = upcast(pred)
    target = target.to(pred.dtype)
    if kind == "bce":
        return F.binary_cross_entropy(pred, target, reduction="none").mean(dim=(-2, -1))
    overlap = (pred * target).sum(dim=(-2, -1))
    total = pred.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))
    if kind == "soft_iou":
        return 1.0 - overlap / (total - overlap + RATIO_EPS)
    if kind == "dice":
        return 1.0 - 2.0 * overlap / (total + RATIO_EPS)
    raise ValueError(f"loss.kind={kind!r}: expected 'bce', 'soft_iou' or 'dice'")


def mass_in_mask(cells: Tensor, masks: Tensor) -> Tensor:
    """Share of each map's mass inside its (soft) mask.

    Args:
        cells: ``(..., P, h, w)`` non-negative maps.
        masks: ``(P, h, w)`` in [0, 1].

    Returns:
        ``(..., P)``; 0 for a map without mass.
    """
    inside = (cells * masks).sum(dim=(-2, -1))
    return inside / cells.sum(dim=(-2, -1)).clamp_min(torch.finfo(cells.dtype).tiny)


def pixel_pair_losses(
    pred: Tensor, masks: Tensor, mask_index: Tensor, kind: str, chunk_pixels: int = PIXEL_CHUNK
) -> Tensor:
    """Per-pair loss of token-grid predictions bilinearly upsampled to pixel-resolution masks.

    Pair ``p`` is compared with ``masks[mask_index[p]]``, so pairs that share a mask (the rows of one
    instance) share its memory. Pairs are processed in chunks of about ``chunk_pixels`` upsampled
    pixels; with gradients, each chunk's upsampled maps are recomputed in the backward pass
    (``torch.utils.checkpoint``) instead of being kept. The loss thus holds O(``chunk_pixels``)
    memory for any number of pairs and any frame size, with the values and gradients of the
    unchunked computation.

    Args:
        pred: ``(P, h, w)`` in [0, 1].
        masks: ``(M, H, W)`` in [0, 1].
        mask_index: ``(P,)`` long, entries of ``masks``.
        kind: as in :func:`pair_losses`.
        chunk_pixels: upsampled pixels per chunk.

    Returns:
        ``(P,)`` fp32.
    """
    size = (masks.shape[-2], masks.shape[-1])

    def losses(pred_chunk: Tensor, index_chunk: Tensor) -> Tensor:
        return pair_losses(bilinear_resize(pred_chunk, size), masks[index_chunk], kind)

    step = max(1, chunk_pixels // (size[0] * size[1]))
    if pred.shape[0] <= step:
        return losses(pred, mask_index)
    recompute = torch.is_grad_enabled() and pred.requires_grad
    chunks = [
        checkpoint(losses, pred[start : start + step], mask_index[start : start + step], use_reentrant=False)
        if recompute
        else losses(pred[start : start + step], mask_index[start : start + step])
        for start in range(0, pred.shape[0], step)
    ]
    return torch.cat(chunks)


def _group_loss(fused: Tensor, group: PairGroup, cfg: LossConfig) -> Tensor:
    """``(P,)`` per-pair loss of one group of pairs."""
    pred = minmax_normalise(group.gather(fused), cfg.squeeze, cfg.minmax)
    if cfg.resize == "pred_to_mask":
        return pixel_pair_losses(pred, group.pixel_cells, group.pixel_index, cfg.kind)
    return pair_losses(pred, group.cell_masks, cfg.kind)


def stack_layer_maps(maps: dict[int, Tensor], layers: list[int]) -> Tensor:
    """The supervised layers' maps, head-averaged when captured per head.

    Args:
        maps: per layer ``(R, K)`` or ``(R, heads, K)``.
        layers: the layers to stack, in order.

    Returns:
        ``(n_layers, R, K)`` fp32.
    """
    missing = [layer for layer in layers if layer not in maps]
    if missing:
        raise ValueError(f"no captured attention for supervised layers {missing} (captured: {sorted(maps)})")
    return torch.stack(
        [
            upcast(maps[layer]).mean(dim=1) if maps[layer].dim() == 3 else upcast(maps[layer])
            for layer in layers
        ]
    )


def attention_mask_loss(
    maps: dict[int, Tensor], supervision: Supervision, cfg: LossConfig
) -> AttentionLossOutput:
    """The attention-mask loss of a batch.

    For each (row, its instance, valid temporal cell ``t``): the fused map's entries of cell ``t``
    as ``(h, w)``, min-max normalised within the cell, compared with the cell's mask at the pixel
    resolution (``pred_to_mask``: bilinear upsampling of the prediction) or the token grid
    (``mask_to_pred``: the area-downsampled mask), by ``cfg.kind``; the mean over all pairs. The
    normalisation is ``cfg.minmax`` with ``cfg.squeeze`` (:func:`minmax_normalise`).

    Args:
        maps: per supervised layer ``(R, K)`` (or ``(R, heads, K)``) probabilities of each row at its
            sample's visual keys (:class:`swim.model.probe.AttentionProbe` output).
        supervision: the batch's supervision (``R`` rows).
        cfg: the loss configuration (layers, fusion, resize, kind).

    Returns:
        The loss and its diagnostics; see :class:`AttentionLossOutput`.
    """
    stacked = stack_layer_maps(maps, cfg.layers)
    _, num_rows, num_keys = stacked.shape
    if num_rows != supervision.num_rows:
        raise ValueError(f"captured maps have {num_rows} rows but the supervision has {supervision.num_rows}")
    sizes = supervision.grid[supervision.row_sample].prod(dim=-1)
    if num_rows and int(sizes.max()) > num_keys:
        raise ValueError(
            f"captured maps have {num_keys} keys per row but a row's video has {int(sizes.max())}"
        )
    valid = torch.arange(num_keys, device=stacked.device)[None, :] < sizes[:, None]

    with torch.autocast(device_type=stacked.device.type, enabled=False):
        fused = fuse_layers(stacked, valid, cfg.fusion, cfg.renormalise)
        groups = pair_groups(supervision, with_pixel_masks=cfg.resize == "pred_to_mask")
        num_pairs = sum(group.num_pairs for group in groups)
        if num_pairs == 0:
            return AttentionLossOutput(loss=fused.sum() * 0.0, num_pairs=0, fused=fused)
        total = fused.new_zeros(())
        layer_mass = fused.new_zeros(len(cfg.layers))
        fused_mass = fused.new_zeros(())
        for group in groups:
            total = total + _group_loss(fused, group, cfg).sum()
            with torch.no_grad():
                layer_mass += mass_in_mask(group.gather(stacked), group.cell_masks).sum(dim=-1)
                fused_mass += mass_in_mask(group.gather(fused), group.cell_masks).sum()
    return AttentionLossOutput(
        loss=total / num_pairs,
        num_pairs=num_pairs,
        fused=fused,
        per_layer_mass_in_mask={
            layer: (layer_mass[i] / num_pairs).detach() for i, layer in enumerate(cfg.layers)
        },
        fused_mass_in_mask=(fused_mass / num_pairs).detach(),
    )
