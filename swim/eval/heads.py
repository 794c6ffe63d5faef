"""A training-free grounding baseline: the best attention heads of a model, used as they are.

In the spirit of "localization heads" (Kang et al., CVPR 2025): every (layer, head) of the language
model is scored on a selection split by the mean share of its attention, from the supervised rows
to a temporal cell, that falls inside the cell's mask; the ``k`` best heads' maps (each renormalised
over the row's visual keys, then averaged) are then scored on another split exactly as the fused
map of a trained model is (:class:`~swim.metrics.grounding.GroundingMetrics`). A supervised model
must beat this, not just its head average, to show that supervision adds something.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from swim.data.batch import SwimBatch
from swim.losses import pair_groups
from swim.losses.mask_loss import mass_in_mask
from swim.metrics.grounding import GroundingMetrics, update_from_maps
from swim.model.module import SwimModule
from swim.model.probe import AttentionProbe, probe_request

Head = tuple[int, int]


def _head_maps(module: SwimModule, probe: AttentionProbe, batch: SwimBatch, query: str) -> Tensor:
    """``(layers, heads, R, K)`` per-head maps of the batch's supervised rows (causal rows)."""
    request = probe_request(batch.supervision, query=query)
    with torch.no_grad(), probe.capture(request) as maps:
        module.model.model(**batch.model_inputs(), use_cache=False)
    return torch.stack([maps[layer].transpose(0, 1) for layer in probe.layers])


def _all_layer_probe(module: SwimModule) -> AttentionProbe:
    """A per-head probe on every decoder layer, replacing the module's own probe."""
    if module.probe is not None:
        module.probe.remove()
        module.probe = None
    num_layers = len(module.model.model.language_model.layers)
    return AttentionProbe(module.model, list(range(num_layers)), keep_heads=True)


def head_mass_in_mask(module: SwimModule, batches: Iterable[SwimBatch], query: str) -> Tensor:
    """``(layers, heads)`` mean share of each head's cell attention inside the mask, over all pairs.

    Replaces the module's probe by a per-head probe on every layer (kept on the module's model).
    """
    probe = _all_layer_probe(module)
    total: Tensor | None = None
    count = 0
    for batch in batches:
        if batch.supervision.num_rows == 0:
            continue
        maps = _head_maps(module, probe, batch, query)
        for group in pair_groups(batch.supervision):
            mass = mass_in_mask(group.gather(maps), group.cell_masks).sum(dim=-1)
            total = mass if total is None else total + mass
            count += group.num_pairs
    probe.remove()
    if total is None or count == 0:
        raise ValueError("no supervised (row, cell) pair in the selection batches: cannot rank heads")
    return total / count


def best_heads(scores: Tensor, k: int) -> list[Head]:
    """The ``k`` (layer, head) pairs of highest ``(layers, heads)`` score, best first."""
    order = torch.argsort(scores.flatten(), descending=True)[:k].tolist()
    heads = scores.shape[1]
    return [(index // heads, index % heads) for index in order]


def heads_map(maps: Tensor, heads: Sequence[Head], valid: Tensor) -> Tensor:
    """The mean of the chosen heads' maps, each renormalised over the row's valid keys.

    Args:
        maps: ``(layers, heads, R, K)`` per-head maps.
        heads: the (layer, head) pairs.
        valid: ``(R, K)`` bool, the rows' real visual keys.

    Returns:
        ``(R, K)``, each row a distribution over its valid keys.
    """
    chosen = torch.stack([maps[layer, head] for layer, head in heads]) * valid
    chosen = chosen / chosen.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(chosen.dtype).tiny)
    return chosen.mean(dim=0)


def heads_grounding(
    module: SwimModule, batches: Iterable[SwimBatch], heads: Sequence[Head], query: str
) -> dict[str, float]:
    """Grounding metrics of the chosen heads' averaged map (names as in ``GroundingMetrics``)."""
    probe = _all_layer_probe(module)
    metric = GroundingMetrics()
    seen = 0
    for batch in batches:
        sample_index = seen + torch.arange(batch.batch_size)
        seen += batch.batch_size
        supervision = batch.supervision
        if supervision.num_rows == 0:
            continue
        maps = _head_maps(module, probe, batch, query)
        sizes = supervision.grid[supervision.row_sample].prod(dim=-1)
        valid = torch.arange(maps.shape[-1])[None, :] < sizes[:, None]
        update_from_maps(metric, heads_map(maps, heads, valid), supervision, sample_index)
    probe.remove()
    return {key: float(value) for key, value in metric.compute().items()}
