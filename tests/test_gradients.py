"""Gradient proofs of every differentiable path of the SWIM loss (issue 10).

``torch.autograd.gradcheck`` in float64 over each link of the chain and over the whole chain (the
probe's maps of a real tiny Qwen2.5-VL, fusion, min-max, resize, BCE / soft IoU / Dice), at the
points where a wrong gradient hides: the arg-max on a corner token, the arg-min inside a one-pixel
mask, empty and full masks, a constant cell, rows of two samples with different token grids. Then
float32 autograd of the real ``SwimModule`` step against float64 central differences on demo
records, and the properties the loss promises: no BCE term at PyTorch's clamp, invariance to the
map's scale.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck
from torch.nn.utils import parametrize

from swim.data.batch import Supervision, contiguous_keys
from swim.losses import LossConfig, attention_mask_loss, fuse_layers
from swim.losses.mask_loss import minmax_normalise, pair_losses, pixel_pair_losses
from swim.losses.resize import bilinear_resize
from swim.model.probe import row_attention
from tests.module_fixtures import make_batch, tiny_module

KINDS = ("bce", "soft_iou", "dice")
SQUEEZE = LossConfig(layers=[0]).squeeze
F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cell_loss(cells: torch.Tensor, masks: torch.Tensor, kind: str, resize: bool) -> torch.Tensor:
    """Min-max, optional bilinear upsampling to the masks' size, and the per-pair loss, summed."""
    pred = minmax_normalise(cells)
    if resize:
        pred = bilinear_resize(pred, tuple(masks.shape[-2:]))
    return pair_losses(pred, masks, kind).sum()


def _cases() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Named ``(cells (P, 3, 5), token-grid masks (P, 3, 5), pixel masks (P, 42, 70))`` in float64."""
    base = torch.rand(1, 3, 5, generator=_generator(2), dtype=F64) * 1e-2
    corner = base.clone()
    corner[0, 0, 0] = 2e-2  # the arg-max on a corner token, outside the mask
    pixel = torch.zeros(1, 42, 70, dtype=F64)
    pixel[0, 15:35, 20:60] = 1.0
    argmin_inside = base.clone()
    argmin_inside[0, 1, 2] = -1e-2  # the arg-min token, whose centre pixel is the whole mask
    one_pixel = torch.zeros(1, 42, 70, dtype=F64)
    one_pixel[0, 21, 35] = 1.0
    one_cell = torch.zeros(1, 3, 5, dtype=F64)
    one_cell[0, 1, 2] = 1.0 / 196
    area = F.avg_pool2d(pixel, 14)
    return {
        "corner_argmax": (corner, area, pixel),
        "argmin_in_one_pixel_mask": (argmin_inside, one_cell, one_pixel),
        "empty_mask": (base, torch.zeros_like(area), torch.zeros_like(pixel)),
        "full_mask": (base, torch.ones_like(area), torch.ones_like(pixel)),
    }


def test_issue_snippet_autograd_matches_finite_differences():
    """The reproduction of issue 10: 65536 against 2.29 before the fix."""
    mask = torch.zeros(1, 84, 140)
    mask[0, 30:70, 40:120] = 1

    def f(x: torch.Tensor) -> torch.Tensor:
        return pair_losses(bilinear_resize(minmax_normalise(x), (84, 140)), mask, "bce").mean()

    x = torch.rand(1, 3, 5, generator=_generator(2)) * 1e-2
    x[0, 0, 0] = 2e-2
    x.requires_grad_(True)
    f(x).backward()
    plus, minus = x.detach().clone(), x.detach().clone()
    plus[0, 0, 0] += 1e-5
    minus[0, 0, 0] -= 1e-5
    numeric = float((f(plus) - f(minus)) / 2e-5)
    assert math.isclose(float(x.grad[0, 0, 0]), numeric, rel_tol=2e-2), (float(x.grad[0, 0, 0]), numeric)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize("resize", ["pred_to_mask", "mask_to_pred"])
def test_gradcheck_minmax_resize_loss(kind, case, resize):
    cells, area, pixel = _cases()[case]
    masks = pixel if resize == "pred_to_mask" else area
    cells = cells.clone().requires_grad_(True)
    assert gradcheck(lambda x: _cell_loss(x, masks, kind, resize == "pred_to_mask"), (cells,), eps=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_chunked_pixel_loss(kind):
    """Chunks of 2 pairs, recomputed in backward (checkpoint), pairs sharing masks by index."""
    cells = torch.rand(5, 3, 4, generator=_generator(3), dtype=F64).requires_grad_(True)
    masks = (torch.rand(3, 42, 56, generator=_generator(4), dtype=F64) > 0.5).to(F64)
    index = torch.tensor([0, 2, 1, 0, 2])

    def chunked(x: torch.Tensor) -> torch.Tensor:
        return pixel_pair_losses(minmax_normalise(x), masks, index, kind, chunk_pixels=2 * 42 * 56).sum()

    def whole(x: torch.Tensor) -> torch.Tensor:
        return pixel_pair_losses(minmax_normalise(x), masks, index, kind, chunk_pixels=1 << 30).sum()

    assert gradcheck(chunked, (cells,), eps=1e-8)
    torch.testing.assert_close(chunked(cells), whole(cells))


@pytest.mark.parametrize("mode", ["product", "mean"])
@pytest.mark.parametrize("renormalise", ["exact", "reference"])
def test_gradcheck_fusion(mode, renormalise):
    maps = torch.rand(3, 4, 7, generator=_generator(5), dtype=F64).softmax(-1).requires_grad_(True)
    valid = torch.ones(4, 7, dtype=torch.bool)
    valid[1, 5:] = False
    weights = torch.rand(4, 7, generator=_generator(6), dtype=F64)
    assert gradcheck(lambda m: (fuse_layers(m, valid, mode, renormalise) * weights).sum(), (maps,), eps=1e-8)


def test_constant_cell_passes_no_gradient_and_no_nan():
    for kind in KINDS:
        cells = torch.full((2, 3, 4), 0.25, dtype=torch.float32, requires_grad=True)
        masks = torch.zeros(2, 42, 56)
        masks[0, :10] = 1.0
        loss = _cell_loss(cells, masks, kind, resize=True)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.equal(cells.grad, torch.zeros_like(cells)), kind
        pred = minmax_normalise(cells.detach())
        assert torch.equal(pred, torch.full_like(pred, 0.5))


def _two_grid_supervision(dtype: torch.dtype) -> tuple[Supervision, dict[int, torch.Tensor]]:
    """Rows of two samples with token grids (2, 2, 3) and (2, 3, 2), one instance each."""
    grids = [(2, 2, 3), (2, 3, 2)]
    gen = _generator(7)
    pixel = [(torch.rand(t, 28 * h, 28 * w, generator=gen) > 0.6).to(dtype) for t, h, w in grids]
    pixel[0][0, 5, 7] = 1.0
    supervision = Supervision(
        row_sample=torch.tensor([0, 0, 1]),
        row_query=torch.tensor([20, 21, 30]),
        row_token=torch.tensor([21, 22, 31]),
        row_instance=torch.tensor([0, 0, 1]),
        row_phrase=torch.tensor([0, 0, 0]),
        visual_keys=[contiguous_keys(3, g) for g in grids],
        grid=torch.tensor(grids),
        instance_sample=torch.tensor([0, 1]),
        cell_masks=[F.avg_pool2d(p, 28) for p in pixel],
        cell_valid=[torch.tensor([True, True]), torch.tensor([False, True])],
        pixel_masks=pixel,
    )
    maps = {layer: torch.rand(3, 12, generator=gen, dtype=dtype).softmax(-1) for layer in (1, 2)}
    return supervision, maps


@pytest.mark.parametrize("resize", ["pred_to_mask", "mask_to_pred"])
@pytest.mark.parametrize("fusion", ["product", "mean"])
def test_gradcheck_whole_loss_over_two_grids(resize, fusion):
    supervision, maps = _two_grid_supervision(F64)
    cfg = LossConfig(layers=[1, 2], resize=resize, fusion=fusion)
    inputs = (maps[1].requires_grad_(True), maps[2].requires_grad_(True))

    def loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return attention_mask_loss({1: first, 2: second}, supervision, cfg).loss

    assert gradcheck(loss, inputs, eps=1e-8)


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_probe_rows(causal):
    """The probe's row softmax (grouped-query heads, a padded sample) in float64."""
    gen = _generator(8)
    query = torch.randn(2, 4, 9, 8, generator=gen, dtype=F64).requires_grad_(True)
    key = torch.randn(2, 2, 9, 8, generator=gen, dtype=F64).requires_grad_(True)
    padding = torch.ones(2, 9, dtype=torch.long)
    padding[1, 7:] = 0
    row_sample, row_query, row_slot = (
        torch.tensor([0, 0, 1]),
        torch.tensor([4, 8, 6]),
        torch.tensor([0, 1, 0]),
    )
    weights = torch.rand(3, 4, 9, generator=gen, dtype=F64)

    def rows(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        probs = row_attention(
            q, k, padding, row_sample, row_query, row_slot, 2, 8**-0.5, causal=causal, key_mask=padding
        )
        return (probs * weights).sum()

    assert gradcheck(rows, (query, key), eps=1e-7)


class _Shift(nn.Module):
    """A parametrisation ``W + sum_i alpha_i D_i``: the weight moved along fixed directions."""

    def __init__(self, directions: torch.Tensor) -> None:
        super().__init__()
        self.directions = directions
        self.alpha = torch.zeros(directions.shape[0], dtype=directions.dtype)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + torch.tensordot(self.alpha, self.directions, dims=1)


@pytest.mark.parametrize("loss_name", ["swim", "reference"])
def test_gradcheck_through_the_probe_of_a_tiny_model(loss_name):
    """The whole chain from decoder weights to the loss, in float64: the probe's maps of layers 1-3
    of the real tiny Qwen2.5-VL on a video of a red square, product fusion, min-max, upsampling to
    the pixel mask, BCE, plus the CE term. The weights of layers 0 and 2 move along 3 random
    directions each; gradcheck compares the loss's gradient in those 6 coordinates.

    The stock model is not all float64: Qwen2's RMSNorm computes in float32 whatever its input, and
    min-max normalisation amplifies that rounding, so differences with steps below ~1e-3 measure
    noise (1e-5: 17% off). The step is 1e-2 along directions of entry scale 0.05 (truncation error
    measured at 7e-4 relative), the tolerance 1% + 5e-5."""
    loss = {"layers": [1, 2, 3]}
    if loss_name == "reference":
        loss.update(causal=False, renormalise="reference", minmax="reference")
    module = tiny_module(loss=loss)
    module.model.double().eval()
    batch = make_batch(module.processor)
    batch.pixel_values_videos = batch.pixel_values_videos.double()
    batch.supervision.pixel_masks = [m.double() for m in batch.supervision.pixel_masks]
    layers = module.model.model.language_model.layers
    shifts = []
    for index, layer in enumerate((layers[0].self_attn.q_proj, layers[2].mlp.down_proj)):
        directions = torch.randn(3, *layer.weight.shape, generator=_generator(9 + index), dtype=F64) * 0.05
        shift = _Shift(directions)
        parametrize.register_parametrization(layer, "weight", shift)
        shifts.append(shift)

    def total(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        shifts[0].alpha, shifts[1].alpha = first, second
        step = module.forward_losses(batch, capture=True)
        assert step.mask_loss is not None and step.attention.num_pairs > 0
        return step.loss

    alphas = (torch.zeros(3, dtype=F64, requires_grad=True), torch.zeros(3, dtype=F64, requires_grad=True))
    assert gradcheck(total, alphas, eps=1e-2, atol=5e-5, rtol=1e-2)


def _demo_batches(train_demo, records_cache, count: int):
    from swim.data.datamodule import SwimDataModule
    from tests.data_fixtures import demo_data_config

    cfg = demo_data_config(train_demo, records_cache, batch_size=1, num_workers=0)
    module = tiny_module()
    datamodule = SwimDataModule(cfg, processor=module.processor)
    datamodule.prepare_data()
    datamodule.setup("validate")
    batches = [b for b in datamodule.val_dataloader() if b.supervision.num_rows][:count]
    assert len(batches) == count
    return module, batches


def _in_float64(batch):
    """A copy of ``batch`` whose pixel inputs and pixel masks are float64 (the rest is shared)."""
    double = copy.copy(batch)
    for name in ("pixel_values_videos", "pixel_values"):
        if getattr(batch, name) is not None:
            setattr(double, name, getattr(batch, name).double())
    return double


def test_float32_module_step_matches_float64_central_differences(train_demo, records_cache):
    """Directional derivative of the real SwimModule step's total loss along a random direction over
    every trainable parameter: float32 autograd against float64 central differences (step 1e-2 along
    a unit direction; see the test above for why not smaller), 4 demo records. Tolerance: 1% of the
    derivative (the bug of issue 10 made gradients 147x and 202x too large)."""
    module, batches = _demo_batches(train_demo, records_cache, 4)
    module.model.eval()
    params = [p for p in module.model.parameters() if p.requires_grad]
    for number, batch in enumerate(batches):
        gen = _generator(100 + number)
        directions = [torch.randn(p.shape, generator=gen) for p in params]
        norm = torch.sqrt(sum((d**2).sum() for d in directions))
        directions = [d / norm for d in directions]
        module.model.float()
        module.model.zero_grad()
        step = module.forward_losses(batch, capture=True)
        assert step.attention is not None and step.attention.num_pairs > 0
        step.loss.backward()
        analytic = float(sum((p.grad * d).sum() for p, d in zip(params, directions, strict=True)))

        module.model.double()
        double = _in_float64(batch)
        eps = 1e-2
        values = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                for p, d in zip(params, directions, strict=True):
                    p.add_(sign * eps * d.to(p.dtype))
                values.append(float(module.forward_losses(double, capture=True).loss))
                for p, d in zip(params, directions, strict=True):
                    p.sub_(sign * eps * d.to(p.dtype))
        numeric = (values[0] - values[1]) / (2 * eps)
        assert math.isclose(analytic, numeric, rel_tol=1e-2, abs_tol=1e-5), (number, analytic, numeric)


@pytest.mark.parametrize("resize", ["pred_to_mask", "mask_to_pred"])
@pytest.mark.parametrize("kind", KINDS)
def test_no_prediction_reaches_the_bce_clamp_and_scale_does_not_matter(resize, kind):
    supervision, maps = _two_grid_supervision(torch.float32)
    cfg = LossConfig(layers=[1, 2], resize=resize, kind=kind)
    losses = []
    for scale in (1e-12, 1e-9, 1e-6, 1e-3, 1.0):
        scaled = {layer: m * scale for layer, m in maps.items()}
        result = attention_mask_loss(scaled, supervision, cfg)
        losses.append(result.loss)
        for cells in (result.fused[:, :6].view(-1, 2, 3), result.fused[2:, 6:12].view(-1, 3, 2)):
            pred = minmax_normalise(cells * scale)
            assert float(pred.min()) >= SQUEEZE * (1 - 1e-4) and float(pred.max()) <= 1 - SQUEEZE * (1 - 1e-4)
            up = bilinear_resize(pred, (56, 84))
            for target in (torch.zeros_like(up), torch.ones_like(up)):
                terms = F.binary_cross_entropy(up, target, reduction="none")
                assert float(terms.max()) < -math.log(SQUEEZE) + 1e-3 < 100.0
    for loss in losses:
        torch.testing.assert_close(loss, losses[-1], rtol=1e-5, atol=0)


def test_minmax_is_invariant_to_scale_from_1e_12_to_1():
    cells = torch.rand(4, 3, 5, generator=_generator(11)) + 0.5
    reference = minmax_normalise(cells)
    for scale in (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1.0):
        torch.testing.assert_close(minmax_normalise(cells * scale), reference, rtol=1e-5, atol=1e-6)
