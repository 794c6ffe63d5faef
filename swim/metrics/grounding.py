"""Attention-grounding metrics (METHOD.md section 6): does the model look at the object?

For each (supervised row, annotated temporal cell) pair, the attention map over the cell's visual
tokens is min-max normalised, upsampled bilinearly to the mask, and scored against it:

- ``iou50`` and ``dice`` of the map thresholded at ``threshold`` (0.5);
- ``pointing_game``: is the arg-max token inside the mask (a token counts as inside when the mask pixel
  at its centre is set; tied maxima count fractionally, so a uniform map scores the mask's area,
  the chance level); ``pointing_top{k}`` for ``k > 1``: is any of the ``k`` highest tokens inside;
- ``roc_auc`` and ``average_precision`` of the upsampled map as a pixel score against the mask
  (ties averaged, as scikit-learn does), computed by sorting, for all pairs at once;
- ``attn_in_mask``: the share of the (unnormalised, upsampled) attention inside the mask.

A pair whose mask is empty has no defined score: all its metrics are NaN, and
:class:`GroundingMetrics` counts such pairs and leaves them out of the averages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from swim.data.batch import Supervision
from swim.losses.mask_loss import minmax_unit
from swim.losses.pairs import pair_groups
from swim.losses.resize import bilinear_resize


def metric_names(topk: Sequence[int] = (1, 5)) -> list[str]:
    """The keys of :func:`grounding_scores` for these ``topk`` values, in a fixed order.

    Training logs them as ``val/<name>`` and evaluation writes ``<source>/grounding/<map>/<name>``:
    one set of names everywhere.
    """
    return [
        "iou50",
        "dice",
        "pointing_game",
        *[f"pointing_top{k}" for k in topk if k > 1],
        "roc_auc",
        "average_precision",
        "attn_in_mask",
    ]


def _centre_hits(mask: Tensor, h: int, w: int) -> Tensor:
    """``(N, H, W)`` bool mask -> ``(N, h, w)`` bool: the mask at each token's centre pixel."""
    height, width = mask.shape[-2:]
    ys = ((torch.arange(h, device=mask.device) + 0.5) * height / h).long().clamp(max=height - 1)
    xs = ((torch.arange(w, device=mask.device) + 0.5) * width / w).long().clamp(max=width - 1)
    return mask[:, ys][:, :, xs]


def _ranking_scores(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """ROC-AUC and average precision of each row, ties averaged.

    Args:
        scores: ``(N, P)`` float scores.
        labels: ``(N, P)`` bool.

    Returns:
        ``(N,)`` AUC (NaN without positives or negatives) and ``(N,)`` AP (NaN without positives).
    """
    num, size = scores.shape
    order = torch.argsort(scores, dim=1, descending=True)
    ranked = torch.gather(scores, 1, order)
    hits = torch.gather(labels, 1, order).double()
    starts = torch.ones_like(ranked, dtype=torch.bool)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    run = torch.cumsum(starts.flatten(), dim=0) - 1
    num_runs = int(run[-1]) + 1 if run.numel() else 0

    position = (
        torch.arange(1, size + 1, device=scores.device, dtype=torch.float64).expand(num, size).flatten()
    )
    run_position = torch.zeros(num_runs, dtype=torch.float64, device=scores.device).index_add_(
        0, run, position
    )
    run_count = torch.zeros(num_runs, dtype=torch.float64, device=scores.device).index_add_(
        0, run, torch.ones_like(position)
    )
    ascending_rank = (size + 1 - run_position / run_count)[run].view(num, size)
    positives = hits.sum(dim=1)
    negatives = size - positives
    rank_sum = (ascending_rank * hits).sum(dim=1)
    auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)

    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    precision = torch.cumsum(hits, dim=1) / torch.arange(
        1, size + 1, device=scores.device, dtype=torch.float64
    )
    run_precision = torch.zeros(num_runs, dtype=torch.float64, device=scores.device)
    run_precision[run[ends.flatten()]] = precision.flatten()[ends.flatten()]
    ap = (hits * run_precision[run].view(num, size)).sum(dim=1) / positives
    return auc.float(), ap.float()


def grounding_scores(
    pred: Tensor, mask: Tensor, *, topk: Sequence[int] = (1, 5), threshold: float = 0.5
) -> dict[str, Tensor]:
    """Grounding scores of attention maps against masks, per pair.

    Args:
        pred: ``(N, h, w)`` non-negative attention maps of ``N`` (row, cell) pairs.
        mask: ``(N, H, W)`` ground truth in {0, 1} (values above 0.5 count as inside).
        topk: pointing-game variants; ``k = 1`` is ``pointing_game``, each ``k > 1`` adds ``pointing_top{k}``.
        threshold: binarisation threshold of the normalised map for IoU and Dice.

    Returns:
        ``{name: (N,) fp32}`` for the names of :func:`metric_names`; NaN where the mask is empty.
    """
    if pred.dim() != 3 or mask.dim() != 3 or pred.shape[0] != mask.shape[0]:
        raise ValueError(f"pred {tuple(pred.shape)} must be (N, h, w) and mask {tuple(mask.shape)} (N, H, W)")
    _, h, w = pred.shape
    size = (int(mask.shape[1]), int(mask.shape[2]))
    pred = pred.float()
    inside = mask > 0.5
    empty = ~inside.flatten(1).any(dim=1)
    scores: dict[str, Tensor] = {}

    normalised = bilinear_resize(minmax_unit(pred), size)
    binary = normalised >= threshold
    overlap = (binary & inside).flatten(1).sum(dim=1).float()
    union = (binary | inside).flatten(1).sum(dim=1).float()
    scores["iou50"] = overlap / union
    scores["dice"] = 2 * overlap / (binary.flatten(1).sum(dim=1) + inside.flatten(1).sum(dim=1)).float()

    centre = _centre_hits(inside, h, w).flatten(1)
    flat = pred.flatten(1)
    top = flat == flat.amax(dim=1, keepdim=True)
    scores["pointing_game"] = (top & centre).sum(dim=1).float() / top.sum(dim=1).float()
    for k in topk:
        if k > 1:
            index = flat.topk(min(k, h * w), dim=1).indices
            scores[f"pointing_top{k}"] = centre.gather(1, index).any(dim=1).float()

    scores["roc_auc"], scores["average_precision"] = _ranking_scores(normalised.flatten(1), inside.flatten(1))
    raw = bilinear_resize(pred.clamp_min(0), size).flatten(1)
    scores["attn_in_mask"] = (raw * inside.flatten(1)).sum(dim=1) / raw.sum(dim=1).clamp_min(
        torch.finfo(torch.float32).tiny
    )
    nan = torch.tensor(float("nan"), device=pred.device)
    return {name: torch.where(empty, nan, value) for name, value in scores.items()}


class GroundingMetrics(Metric):
    """Grounding scores averaged per pair, then per sample, then over samples.

    ``update(pred, mask, sample_index)`` takes ``pred (N, h, w)``, ``mask (N, H, W)`` and
    ``sample_index (N,)`` long (a sample id unique across the evaluation, also across processes).
    ``compute()`` returns each metric of :func:`metric_names` (mean over samples of the mean over
    the sample's pairs, NaN pairs left out), plus ``num_pairs``, ``num_samples`` and
    ``num_empty_masks`` (pairs without a mask pixel, left out of every average).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, topk: Sequence[int] = (1, 5), threshold: float = 0.5, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.topk = tuple(topk)
        self.threshold = threshold
        self.names = metric_names(self.topk)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("sample_index", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, mask: Tensor, sample_index: Tensor) -> None:
        if sample_index.shape != pred.shape[:1]:
            raise ValueError(
                f"sample_index {tuple(sample_index.shape)} must be (N,) for pred {tuple(pred.shape)}"
            )
        scores = grounding_scores(pred.detach(), mask, topk=self.topk, threshold=self.threshold)
        self.scores.append(torch.stack([scores[name] for name in self.names], dim=1))
        self.sample_index.append(sample_index.long())

    def compute(self) -> dict[str, Tensor]:
        # After a distributed sync the list states are already concatenated tensors.
        if len(self.scores) == 0:
            nan = torch.tensor(float("nan"), device=self.device)
            zero = torch.tensor(0, device=self.device)
            return {
                **dict.fromkeys(self.names, nan),
                "num_pairs": zero,
                "num_samples": zero,
                "num_empty_masks": zero,
            }
        scores = dim_zero_cat(self.scores)
        samples, sample_of_pair = torch.unique(dim_zero_cat(self.sample_index), return_inverse=True)
        defined = ~torch.isnan(scores)
        sums = torch.zeros(samples.numel(), scores.shape[1], device=scores.device).index_add_(
            0, sample_of_pair, torch.where(defined, scores, torch.zeros_like(scores))
        )
        counts = torch.zeros_like(sums).index_add_(0, sample_of_pair, defined.float())
        per_sample = sums / counts
        overall = per_sample.nanmean(dim=0)
        result = {name: overall[i] for i, name in enumerate(self.names)}
        result["num_pairs"] = torch.tensor(scores.shape[0], device=scores.device)
        result["num_samples"] = torch.tensor(samples.numel(), device=scores.device)
        result["num_empty_masks"] = (~defined[:, 0]).sum()
        return result


def update_from_maps(
    metric: GroundingMetrics, fused: Tensor, supervision: Supervision, sample_index: Tensor | None = None
) -> int:
    """Feed a batch's fused maps to ``metric``, pair by pair.

    Args:
        metric: the metric to update.
        fused: ``(R, K)`` fused attention of each supervised row over its sample's visual keys
            (:attr:`swim.losses.AttentionLossOutput.fused`).
        supervision: the batch's supervision; pixel masks are used when present, else cell masks.
        sample_index: ``(B,)`` long global id of each sample of the batch; default ``arange(B)``.

    Returns:
        The number of pairs added.
    """
    with_pixels = supervision.pixel_masks is not None
    batch_size = supervision.batch_size
    if sample_index is None:
        sample_index = torch.arange(batch_size, device=fused.device)
    added = 0
    for group in pair_groups(supervision, with_pixel_masks=with_pixels):
        masks = group.pixel_masks if with_pixels else group.cell_masks
        metric.update(group.gather(fused), masks, sample_index[supervision.row_sample[group.rows]])
        added += group.num_pairs
    return added


def reference_maps(supervision: Supervision) -> dict[str, Tensor]:
    """The two reference points of the grounding metrics, as per-row maps over the visual keys.

    ``chance`` is a uniform map (its pointing game is the mask's share of the frame); ``oracle`` is
    each row's ground truth at the token grid (:attr:`Supervision.cell_masks`), the best a map of
    visual tokens can do against the pixel masks.

    Returns:
        ``{"chance": (R, K), "oracle": (R, K)}`` fp32 with ``K`` the batch's largest ``T*h*w``,
        in the layout of :func:`update_from_maps`'s ``fused``.
    """
    sizes = [int(mask.numel()) for mask in supervision.cell_masks]
    width = max(sizes, default=0)
    oracle = torch.zeros(supervision.num_rows, width)
    for row, instance in enumerate(supervision.row_instance.tolist()):
        oracle[row, : sizes[instance]] = supervision.cell_masks[instance].flatten().float()
    return {"chance": torch.ones_like(oracle), "oracle": oracle}
