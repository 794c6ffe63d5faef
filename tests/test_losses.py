"""SWIM losses on hand-computed cases: fusion, pairing, BCE / soft IoU / Dice, both resize directions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from swim.data.batch import Supervision, contiguous_keys
from swim.losses import LossConfig, attention_mask_loss, composite_loss, fuse_layers, pair_groups
from swim.losses.mask_loss import pixel_pair_losses
from swim.losses.resize import bilinear_resize, bilinear_weights

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# Bilinear 2 -> 4 upsampling (align_corners=False) along one axis, written out by hand.
UPSAMPLE_2_TO_4 = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])


def _supervision(
    grids: list[tuple[int, int, int]],
    rows: list[tuple[int, int]],
    cell_masks: list[torch.Tensor],
    cell_valid: list[list[bool]],
    pixel_masks: list[torch.Tensor] | None = None,
) -> Supervision:
    """One instance per sample; ``rows`` are ``(sample, query position)``."""
    row_sample = torch.tensor([sample for sample, _ in rows], dtype=torch.long)
    row_query = torch.tensor([query for _, query in rows], dtype=torch.long)
    return Supervision(
        row_sample=row_sample,
        row_query=row_query,
        row_token=row_query + 1,
        row_instance=row_sample.clone(),
        row_phrase=row_sample.clone(),
        visual_keys=[contiguous_keys(3, g) for g in grids],
        grid=torch.tensor(grids, dtype=torch.long),
        instance_sample=torch.arange(len(grids)),
        cell_masks=cell_masks,
        cell_valid=[torch.tensor(valid) for valid in cell_valid],
        pixel_masks=pixel_masks,
    )


# One sample, grid (T=2, h=2, w=2), one row. Cell 0 of the map is [[0.1, 0.3], [0.2, 0.4]] (min-max
# normalised: [[0, 2/3], [1/3, 1]], then squeezed into [s, 1 - s]), its mask [[0, 1], [0, 1]]; cell 1
# has no ground truth.
SQUEEZE = LossConfig(layers=[1]).squeeze
CELL0 = torch.tensor([0.1, 0.3, 0.2, 0.4])
UNIT = [0.0, 2 / 3, 1 / 3, 1.0]
NORMALISED = SQUEEZE + (1 - 2 * SQUEEZE) * torch.tensor([[0.0, 2 / 3], [1 / 3, 1.0]])
MASK = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
P = [SQUEEZE + (1 - 2 * SQUEEZE) * u for u in UNIT]


def _single_case(kind: str = "bce", resize: str = "mask_to_pred", invalid_cell_mask: float = 0.0):
    layer_map = torch.cat([CELL0, torch.tensor([0.5, 0.5, 0.5, 0.5])])[None] / 3.0
    cell_masks = [torch.stack([MASK, torch.full((2, 2), invalid_cell_mask)])]
    pixel = torch.stack([MASK.repeat_interleave(2, 0).repeat_interleave(2, 1), torch.zeros(4, 4)])
    supervision = _supervision([(2, 2, 2)], [(0, 20)], cell_masks, [[True, False]], [pixel])
    cfg = LossConfig(layers=[1], kind=kind, resize=resize)
    return {1: layer_map.requires_grad_()}, supervision, cfg


def test_fuse_layers_product_and_mean_by_hand():
    maps = torch.tensor([[[0.2, 0.3, 0.1]], [[0.5, 0.1, 0.2]]])
    valid = torch.tensor([[True, True, False]])
    torch.testing.assert_close(
        fuse_layers(maps, valid, "product"), torch.tensor([[0.1 / 0.13, 0.03 / 0.13, 0.0]])
    )
    torch.testing.assert_close(
        fuse_layers(maps, valid, "mean"), torch.tensor([[0.35 / 0.55, 0.2 / 0.55, 0.0]])
    )
    with pytest.raises(ValueError, match="fusion"):
        fuse_layers(maps, valid, "max")


def test_product_fusion_is_stable_with_tiny_probabilities():
    maps = torch.tensor([[1e-20, 2e-20, 5e-21]]).expand(6, 1, 3).clone()
    valid = torch.tensor([[True, True, False]])
    fused = fuse_layers(maps, valid, "product")
    torch.testing.assert_close(fused, torch.tensor([[1 / 65, 64 / 65, 0.0]]))
    nothing_valid = fuse_layers(maps, torch.zeros(1, 3, dtype=torch.bool), "product")
    assert torch.equal(nothing_valid, torch.zeros(1, 3))
    zeros = fuse_layers(torch.zeros(2, 1, 3), valid, "product")
    torch.testing.assert_close(zeros, torch.tensor([[0.5, 0.5, 0.0]]))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("bce", -(math.log(1 - P[0]) + math.log(P[1]) + math.log(1 - P[2]) + math.log(P[3])) / 4),
        ("soft_iou", 1 - (P[1] + P[3]) / (sum(P) + 2 - P[1] - P[3])),
        ("dice", 1 - 2 * (P[1] + P[3]) / (sum(P) + 2)),
    ],
)
def test_mask_to_pred_losses_by_hand(kind, expected):
    maps, supervision, cfg = _single_case(kind)
    result = attention_mask_loss(maps, supervision, cfg)
    assert result.num_pairs == 1
    torch.testing.assert_close(result.loss, torch.tensor(expected), atol=1e-5, rtol=0)
    cell0 = result.fused[0, :4] / result.fused[0, :4].sum()
    torch.testing.assert_close(cell0, CELL0 / CELL0.sum())
    torch.testing.assert_close(result.per_layer_mass_in_mask[1], torch.tensor(0.7))
    torch.testing.assert_close(result.fused_mass_in_mask, torch.tensor(0.7))
    result.loss.backward()
    assert torch.isfinite(maps[1].grad).all() and bool(maps[1].grad[0, :4].any())
    torch.testing.assert_close(maps[1].grad[0, 4:], torch.zeros(4), atol=1e-6, rtol=0)


def test_pred_to_mask_upsamples_the_prediction_bilinearly():
    maps, supervision, cfg = _single_case("bce", "pred_to_mask")
    result = attention_mask_loss(maps, supervision, cfg)
    up = UPSAMPLE_2_TO_4 @ NORMALISED @ UPSAMPLE_2_TO_4.T
    target = supervision.pixel_masks[0][0]
    assert float(up.min()) > 0.0 and float(up.max()) < 1.0
    expected = -(target * torch.log(up) + (1 - target) * torch.log(1 - up)).mean()
    torch.testing.assert_close(result.loss, expected, atol=1e-6, rtol=0)
    result.loss.backward()
    assert torch.isfinite(maps[1].grad).all()


@pytest.mark.parametrize(
    "size_in, size_out", [((2, 2), (4, 4)), ((7, 5), (98, 70)), ((6, 9), (25, 13)), ((8, 8), (3, 5))]
)
def test_bilinear_resize_equals_interpolate(size_in, size_out):
    maps = torch.rand(3, *size_in, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(
        maps[:, None], size=size_out, mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(bilinear_resize(maps, size_out), expected[:, 0], atol=1e-6, rtol=0)
    weights = bilinear_weights(2, 4, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(weights, UPSAMPLE_2_TO_4)


@pytest.mark.parametrize("kind", ["bce", "soft_iou", "dice"])
def test_chunked_pixel_loss_equals_the_whole_computation(kind):
    """Chunks of 2 pairs of 28 x 42 pixels, recomputed in backward, against one unchunked pass;
    pairs 5 and 6 share the masks of pairs 0 and 3."""
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(7, 2, 3, generator=generator)
    masks = (torch.rand(5, 28, 42, generator=generator) > 0.6).float()
    index = torch.tensor([0, 1, 2, 3, 4, 0, 3])
    whole, chunked = base.clone().requires_grad_(), base.clone().requires_grad_()
    expected = pixel_pair_losses(whole, masks[index], torch.arange(7), kind, chunk_pixels=7 * 28 * 42)
    result = pixel_pair_losses(chunked, masks, index, kind, chunk_pixels=2 * 28 * 42)
    torch.testing.assert_close(result, expected)
    (expected * torch.arange(7.0)).sum().backward()
    (result * torch.arange(7.0)).sum().backward()
    torch.testing.assert_close(chunked.grad, whole.grad)
    assert bool(chunked.grad[1:].abs().sum(dim=(1, 2)).gt(0).all())
    with torch.no_grad():
        unrecorded = pixel_pair_losses(base, masks, index, kind, chunk_pixels=2 * 28 * 42)
    torch.testing.assert_close(unrecorded, expected)


def test_only_valid_cells_make_pairs():
    first = attention_mask_loss(*_single_case(invalid_cell_mask=0.0))
    second = attention_mask_loss(*_single_case(invalid_cell_mask=1.0))
    assert first.num_pairs == second.num_pairs == 1
    assert torch.equal(first.loss, second.loss)
    _, supervision, _ = _single_case()
    (group,) = pair_groups(supervision)
    assert group.cells.tolist() == [0] and group.rows.tolist() == [0]


def test_batch_without_supervision_gives_zero_connected_loss():
    maps = {1: torch.rand(0, 0, requires_grad=True), 2: torch.rand(0, 0, requires_grad=True)}
    result = attention_mask_loss(maps, Supervision.empty(3), LossConfig(layers=[1, 2]))
    assert result.num_pairs == 0 and float(result.loss.detach()) == 0.0
    assert result.loss.requires_grad and result.per_layer_mass_in_mask == {}
    result.loss.backward()
    maps, supervision, cfg = _single_case()
    supervision.cell_valid[0][:] = False
    result = attention_mask_loss(maps, supervision, cfg)
    assert result.num_pairs == 0 and float(result.loss.detach()) == 0.0
    result.loss.backward()
    assert not bool(maps[1].grad.any())


def _reference_pair_loss(fused, supervision, cfg, row, cell):
    """One pair, computed on its own with the loss's published definition (``F.interpolate`` for
    the upsampling: with the squeeze, float rounding moves the loss by rounding only)."""
    _, h, w = supervision.grid[supervision.row_sample[row]].tolist()
    entries = fused[row, cell * h * w : (cell + 1) * h * w].view(h, w)
    unit = (entries - entries.min()) / (entries.max() - entries.min())
    pred = cfg.squeeze + (1 - 2 * cfg.squeeze) * unit
    instance = int(supervision.row_instance[row])
    if cfg.resize == "mask_to_pred":
        return torch.nn.functional.binary_cross_entropy(pred, supervision.cell_masks[instance][cell])
    target = supervision.pixel_masks[instance][cell]
    up = torch.nn.functional.interpolate(pred[None, None], size=tuple(target.shape), mode="bilinear")
    return torch.nn.functional.binary_cross_entropy(up[0, 0], target)


@pytest.mark.parametrize("resize", ["mask_to_pred", "pred_to_mask"])
def test_vectorised_loss_equals_pair_by_pair_over_mixed_grids(resize):
    """Samples 0 and 2 share a grid (one group of two instances); rows 0 and 2 share instance 0."""
    generator = torch.Generator().manual_seed(0)
    grids = [(2, 2, 3), (2, 2, 2), (2, 2, 3)]
    cell_masks = [torch.rand(*grid, generator=generator) for grid in grids]
    pixel_masks = [(torch.rand(t, 14 * h, 14 * w, generator=generator) > 0.5).float() for t, h, w in grids]
    valid = [[True, True], [False, True], [True, False]]
    rows = [(0, 30), (1, 31), (0, 32), (2, 40), (1, 35)]
    supervision = _supervision(grids, rows, cell_masks, valid, pixel_masks)
    maps = {layer: torch.rand(5, 12, generator=generator).softmax(-1) for layer in (0, 3)}
    cfg = LossConfig(layers=[0, 3], resize=resize)
    result = attention_mask_loss(maps, supervision, cfg)
    pairs = [(r, t) for r, (s, _) in enumerate(rows) for t, ok in enumerate(valid[s]) if ok]
    assert result.num_pairs == len(pairs) == 7
    expected = torch.stack(
        [_reference_pair_loss(result.fused, supervision, cfg, r, t) for r, t in pairs]
    ).mean()
    torch.testing.assert_close(result.loss, expected)
    assert result.fused.shape == (5, 12)
    assert not bool(result.fused[1, 8:].any()) and not bool(result.fused[4, 8:].any())
    torch.testing.assert_close(result.fused.sum(-1), torch.ones(5))


def test_head_maps_are_averaged_for_the_loss():
    maps, supervision, cfg = _single_case()
    per_head = torch.stack([maps[1].detach() * 0.5, maps[1].detach() * 1.5], dim=1)
    averaged = attention_mask_loss({1: per_head}, supervision, cfg)
    plain = attention_mask_loss(maps, supervision, cfg)
    torch.testing.assert_close(averaged.loss, plain.loss)


def test_mask_loss_errors_name_what_is_wrong():
    maps, supervision, cfg = _single_case(resize="pred_to_mask")
    with pytest.raises(ValueError, match=r"supervised layers \[2\]"):
        attention_mask_loss(maps, supervision, LossConfig(layers=[1, 2]))
    supervision.pixel_masks = None
    with pytest.raises(ValueError, match="pixel_masks"):
        attention_mask_loss(maps, supervision, cfg)
    maps, supervision, cfg = _single_case()
    supervision.cell_masks[0] = torch.zeros(2, 3, 3)
    with pytest.raises(ValueError, match=r"instance 0 \(sample 0\): cell_masks has shape \(2, 3, 3\)"):
        attention_mask_loss(maps, supervision, cfg)
    maps, supervision, cfg = _single_case()
    with pytest.raises(ValueError, match="8"):
        attention_mask_loss({1: maps[1][:, :5]}, supervision, cfg)
    maps, supervision, cfg = _single_case(resize="pred_to_mask")
    supervision.pixel_masks[0] = torch.zeros(2, 0, 4)
    with pytest.raises(
        ValueError, match=r"pixel_masks has shape \(2, 0, 4\), expected \(2, H, W\) with H, W > 0"
    ):
        attention_mask_loss(maps, supervision, cfg)


def test_composite_loss_and_config():
    cfg = LossConfig(layers=[1, 2])
    assert float(composite_loss(torch.tensor(2.0), torch.tensor(3.0), cfg)) == pytest.approx(0.05 * 2 + 3)
    with pytest.raises(ValueError, match=r"loss\.kind='focal'"):
        LossConfig(layers=[1], kind="focal")
    with pytest.raises(ValueError, match="layers is empty"):
        LossConfig()
    with pytest.raises(ValueError, match="unknown keys"):
        LossConfig.from_mapping({"layers": [1], "weight": 1})
    assert not LossConfig(mask_weight=0.0).supervises_attention


@pytest.mark.parametrize(
    ("name", "changed"),
    [
        ("swim", {}),
        ("text_only", {"text_weight": 1.0, "mask_weight": 0.0}),
        ("soft_iou", {"kind": "soft_iou"}),
        ("dice", {"kind": "dice"}),
        ("mean_fusion", {"fusion": "mean"}),
        ("token_query", {"query": "token"}),
        ("mask_to_pred", {"resize": "mask_to_pred"}),
    ],
)
def test_loss_configs_compose(name, changed):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=None, overrides=["+model=tiny", f"+loss={name}"])
    loss = LossConfig.from_mapping(OmegaConf.to_container(cfg.loss, resolve=True))
    reference = LossConfig(layers=list(cfg.model.supervised_layers))
    assert loss == LossConfig(**{**vars(reference), **changed})
