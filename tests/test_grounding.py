"""Attention-grounding metrics: perfect maps, chance maps, hand cases, and the per-sample average."""

from __future__ import annotations

import pytest
import torch
from sklearn import metrics

from swim.data.batch import Supervision, contiguous_keys
from swim.metrics.grounding import (
    GroundingMetrics,
    grounding_scores,
    metric_names,
    reference_maps,
    update_from_maps,
)


def _box_mask(height: int, width: int, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[0, top:bottom, left:right] = 1.0
    return mask


def test_map_equal_to_mask_scores_perfectly():
    mask = _box_mask(8, 8, 2, 5, 3, 7)
    scores = grounding_scores(mask.clone(), mask)
    assert list(scores) == metric_names((1, 5))
    for name, value in scores.items():
        assert float(value) == pytest.approx(1.0), name


def test_uniform_map_scores_chance():
    mask = _box_mask(8, 8, 2, 5, 3, 7)
    area = 12 / 64
    scores = grounding_scores(torch.full((1, 8, 8), 0.3), mask)
    assert float(scores["pointing_game"]) == pytest.approx(area)
    assert float(scores["roc_auc"]) == pytest.approx(0.5)
    assert float(scores["average_precision"]) == pytest.approx(area)
    assert float(scores["attn_in_mask"]) == pytest.approx(area)
    assert float(scores["iou50"]) == 0.0


def test_hand_computed_case():
    pred = torch.tensor([[[0.9, 0.5], [1.0, 0.2]]])
    mask = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    scores = grounding_scores(pred, mask, topk=(1, 2))
    # Normalised map [[0.875, 0.375], [1, 0]] >= 0.5 -> [[1, 0], [1, 0]]: overlap 1, union 3.
    assert float(scores["iou50"]) == pytest.approx(1 / 3)
    assert float(scores["dice"]) == pytest.approx(0.5)
    assert float(scores["pointing_game"]) == 1.0
    # Positives {1.0, 0.5} vs negatives {0.9, 0.2}: 3 of 4 pairs ordered right.
    assert float(scores["roc_auc"]) == pytest.approx(0.75)
    # Ranked 1.0 (+), 0.9 (-), 0.5 (+), 0.2 (-): precision 1 and 2/3 at the hits.
    assert float(scores["average_precision"]) == pytest.approx((1 + 2 / 3) / 2)
    assert float(scores["attn_in_mask"]) == pytest.approx(1.5 / 2.6)

    miss = grounding_scores(
        torch.tensor([[[1.0, 0.9], [0.0, 0.0]]]), torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]), topk=(2,)
    )
    assert float(miss["pointing_game"]) == 0.0 and float(miss["pointing_top2"]) == 1.0


def test_token_map_is_upsampled_to_the_mask():
    """A 2x2 token map peaking at the top-right token against the top-right quadrant of a 56x56 mask."""
    pred = torch.tensor([[[0.1, 0.8], [0.05, 0.2]]])
    mask = _box_mask(56, 56, 0, 28, 28, 56)
    scores = grounding_scores(pred, mask, topk=(1, 2))
    assert float(scores["pointing_game"]) == 1.0
    assert float(scores["pointing_top2"]) == 1.0
    assert float(scores["attn_in_mask"]) > 0.5
    assert float(scores["roc_auc"]) > 0.9
    upsampled = torch.nn.functional.interpolate(pred[:, None], size=(56, 56), mode="bilinear")[:, 0]
    assert float(grounding_scores(upsampled, mask)["roc_auc"]) == pytest.approx(float(scores["roc_auc"]))


def test_empty_mask_gives_nan_and_batched_scores_equal_single_ones():
    generator = torch.Generator().manual_seed(0)
    pred = torch.rand(5, 3, 4, generator=generator)
    mask = (torch.rand(5, 12, 16, generator=generator) > 0.7).float()
    mask[2] = 0.0
    batched = grounding_scores(pred, mask)
    for name, values in batched.items():
        assert bool(torch.isnan(values[2])), name
        for i in (0, 1, 3, 4):
            single = grounding_scores(pred[i : i + 1], mask[i : i + 1])[name]
            torch.testing.assert_close(values[i : i + 1], single, msg=name)


def test_ranking_scores_match_scikit_learn_with_ties():
    generator = torch.Generator().manual_seed(0)
    pred = (torch.rand(6, 5, 5, generator=generator) * 4).round()
    mask = (torch.rand(6, 5, 5, generator=generator) > 0.6).float()
    scores = grounding_scores(pred, mask)
    for i in range(6):
        labels, values = mask[i].flatten().numpy(), pred[i].flatten().numpy()
        assert float(scores["roc_auc"][i]) == pytest.approx(metrics.roc_auc_score(labels, values))
        assert float(scores["average_precision"][i]) == pytest.approx(
            metrics.average_precision_score(labels, values)
        )


def test_metric_averages_per_sample_then_overall():
    perfect = _box_mask(4, 4, 0, 2, 0, 2)
    metric = GroundingMetrics(topk=(1,))
    pred = torch.cat([perfect, torch.full((1, 4, 4), 1.0), perfect, perfect])
    mask = torch.cat([perfect, perfect, perfect, torch.zeros(1, 4, 4)])
    metric.update(pred[:2], mask[:2], torch.tensor([7, 7]))
    metric.update(pred[2:], mask[2:], torch.tensor([9, 9]))
    result = metric.compute()
    # Sample 7: pointing 1 and 0.25 (chance) -> 0.625; sample 9: 1 (its empty-mask pair is left out).
    assert float(result["pointing_game"]) == pytest.approx((0.625 + 1.0) / 2)
    assert float(result["roc_auc"]) == pytest.approx((0.75 + 1.0) / 2)
    assert int(result["num_pairs"]) == 4 and int(result["num_samples"]) == 2
    assert int(result["num_empty_masks"]) == 1
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(metric.compute()["iou50"])


def _two_sample_supervision() -> Supervision:
    grid = torch.tensor([[2, 2, 2], [1, 2, 2]])
    cell = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    return Supervision(
        row_sample=torch.tensor([0, 1]),
        row_query=torch.tensor([10, 12]),
        row_token=torch.tensor([11, 13]),
        row_instance=torch.tensor([0, 1]),
        row_phrase=torch.tensor([0, 1]),
        visual_keys=[contiguous_keys(2, g) for g in grid.tolist()],
        grid=grid,
        instance_sample=torch.tensor([0, 1]),
        cell_masks=[torch.stack([cell, cell]), cell[None]],
        cell_valid=[torch.tensor([True, True]), torch.tensor([True])],
    )


def test_update_from_fused_maps_and_supervision():
    supervision = _two_sample_supervision()
    fused = torch.tensor([[0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0], [0.1, 0.7, 0.1, 0.1, 0, 0, 0, 0]])
    metric = GroundingMetrics(topk=(1,))
    assert update_from_maps(metric, fused, supervision, sample_index=torch.tensor([100, 101])) == 3
    result = metric.compute()
    # Sample 100: cell 0 points at the mask, cell 1 has 3 tied maxima of which 1 is in the mask;
    # sample 101 points off the mask.
    assert float(result["pointing_game"]) == pytest.approx((0.5 * (1.0 + 1 / 3) + 0.0) / 2)
    assert int(result["num_samples"]) == 2


def test_reference_maps_score_chance_and_the_token_grid_oracle():
    supervision = _two_sample_supervision()
    maps = reference_maps(supervision)
    assert maps["oracle"].shape == maps["chance"].shape == (2, 8)
    assert maps["oracle"][1, 4:].eq(0).all()
    scores = {}
    for name, fused in maps.items():
        metric = GroundingMetrics(topk=(1,))
        update_from_maps(metric, fused, supervision)
        scores[name] = metric.compute()
    # One token of four carries the mask: a uniform map points inside a quarter of the time.
    assert float(scores["chance"]["pointing_game"]) == pytest.approx(0.25)
    assert float(scores["chance"]["roc_auc"]) == pytest.approx(0.5)
    assert float(scores["oracle"]["pointing_game"]) == pytest.approx(1.0)
    assert float(scores["oracle"]["iou50"]) == pytest.approx(1.0)
