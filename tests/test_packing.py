"""Packed batches (``data.packing=true``): first-fit rows, MRoPE positions against the model's own
``get_rope_index``, packed-equals-one-by-one (CE, mask loss, probe maps, gradients) on the tiny
Qwen2.5-VL and Qwen3-VL (timestamped cells, DeepStack) under SDPA and eager, no token visible across
samples, the probe's FlashAttention boundaries, the sampler (determinism, resume, two ranks) and
real ``train.py`` runs."""

# ruff: noqa: F811  (pytest fixtures imported from data_fixtures are re-bound as test arguments)
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from data_fixtures import demo_data_config, processor, small_demo  # noqa: F401
from module_fixtures import make_batch, tiny_module
from torch.nn.functional import pad
from train_fixtures import FAST, demo_overrides, read_metrics, run_train_py

from swim.data.batch import SwimBatch
from swim.data.budget import TokenBudgetSampler, packed_batches
from swim.data.chat import Rows
from swim.data.collate import collate
from swim.data.datamodule import SwimDataModule
from swim.data.demo import generate_demo
from swim.data.packing import collate_packed, sample_positions
from swim.data.positions import MRope
from swim.data.sample import Sample
from swim.losses import attention_mask_loss, composite_loss
from swim.model.backbone import BackboneConfig
from swim.model.families import DEFAULT_FAMILY, get_family
from swim.model.module import SwimModule
from swim.model.packing import mrope_of
from swim.model.probe import row_attention

TOL = 1e-5
GRAD_TOL_FP32 = 1e-4


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def samples(
    family: str, small_demo: Path, processor: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Two supervised demo videos, a demo image sample and a hand-made text-only sample, built by
    ``family``'s processor from a demo drawn at its token side (the shared 28 px one for Qwen2.5-VL)."""
    adapter = get_family(family)
    demo = small_demo
    if family != DEFAULT_FAMILY:
        processor = adapter.build_processor()
        demo = tmp_path_factory.mktemp(f"demo_{family}")
        generate_demo(
            demo,
            seed=0,
            num_train=6,
            num_val=2,
            num_bench=2,
            num_images=2,
            token_px=adapter.spec.token_px,
            progress=False,
        )
    cfg = demo_data_config(demo, tmp_path_factory.mktemp("cache"), num_workers=0)
    dm = SwimDataModule(cfg, processor, spec=adapter.spec)
    dm.setup("fit")
    built = [dm.datasets["train"][i] for i in range(len(dm.datasets["train"]))]
    videos = [s for s in built if isinstance(s, Sample) and s.video_grid_thw is not None and len(s.rows)]
    images = [s for s in built if isinstance(s, Sample) and s.image_grid_thw is not None]
    assert len(videos) >= 2 and images, "the demo has supervised videos and image samples"
    text = make_batch(processor, video=False, supervised=False, sample_id="text")
    text_only = Sample(
        id="text",
        input_ids=text.input_ids[0],
        attention_mask=text.attention_mask[0],
        labels=text.labels[0],
        mm_token_type_ids=text.mm_token_type_ids[0],
        rows=Rows.empty(),
        pixel_masks=[],
    )
    pad = int(processor.tokenizer.pad_token_id)
    rope = mrope_of(BackboneConfig(family=family))
    return {"videos": videos[:2], "image": images[0], "text": text_only, "pad": pad, "rope": rope}


@pytest.fixture(scope="module", params=["sdpa", pytest.param("eager", marks=pytest.mark.slow)])
def module(request, family: str) -> SwimModule:
    torch.manual_seed(0)
    return tiny_module(backbone={"kind": "tiny", "family": family, "attn_implementation": request.param})


def _grads(module: SwimModule, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_positions_equal_the_models_get_rope_index(samples: dict[str, Any], module: SwimModule) -> None:
    for sample in [*samples["videos"], samples["image"], samples["text"]]:
        ours = sample_positions(sample, samples["rope"])
        assert torch.equal(ours[0], torch.arange(len(sample)))
        if sample.video_grid_thw is None and sample.image_grid_thw is None:
            assert torch.equal(ours[1:], torch.arange(len(sample)).expand(3, -1))
            continue
        theirs, _ = module.model.model.get_rope_index(
            sample.input_ids[None],
            mm_token_type_ids=sample.mm_token_type_ids[None],
            image_grid_thw=sample.image_grid_thw,
            video_grid_thw=sample.video_grid_thw,
            second_per_grid_ts=sample.second_per_grid_ts,
        )
        assert torch.equal(ours[1:], theirs[:, 0]), sample.id


def _double(batch: SwimBatch) -> SwimBatch:
    return batch.apply(lambda t: t.double() if t.is_floating_point() else t)


@pytest.mark.parametrize("precision", ["float32", pytest.param("float64", marks=pytest.mark.slow)])
def test_a_packed_row_equals_its_samples_one_by_one(
    samples: dict[str, Any], module: SwimModule, precision: str
) -> None:
    """Video, text-only, video, image in one row: CE, mask loss, maps and gradients as one by one.

    Losses and maps agree to 1e-5 in float32. Float32 gradients agree to 1e-4 relative to each
    gradient tensor's norm, not 1e-5: the token embedding's differ by up to ~5e-5 on entries of ~1
    (the kernels sum in another order over a block-masked row than over a short causal one). In
    float64 losses, maps and every gradient agree to 1e-10 under SDPA (1e-7 under eager, whose
    softmax runs in float32): the difference is rounding, not a leak. Under Qwen3-VL the row takes
    DeepStack's joint image-and-video path (its features scattered over both samples' visual tokens),
    each sample alone the video-only or image-only one.
    """
    first, second = samples["videos"]
    order = [first, samples["text"], second, samples["image"]]
    convert = _double if precision == "float64" else (lambda batch: batch)
    eager = module.model.config.text_config._attn_implementation.startswith("eager")
    tol = (1e-7 if eager else 1e-10) if precision == "float64" else TOL
    module.model.to(getattr(torch, precision))
    module.train()
    packed = collate_packed(order, samples["pad"], samples["rope"])
    assert packed.batch_size == 1 and packed.position_ids.shape == (4, 1, sum(len(s) for s in order))
    step = module.forward_losses(convert(packed), capture=True)
    packed_grads = _grads(module, step.loss)

    singles = [module.forward_losses(convert(collate([s], samples["pad"])), capture=True) for s in order]
    count = sum(s.num_label_tokens for s in singles)
    assert step.num_label_tokens == count
    text_loss = sum(s.text_loss * s.num_label_tokens for s in singles) / count
    torch.testing.assert_close(step.text_loss, text_loss, atol=tol, rtol=0)
    keys = step.maps[module.loss_cfg.layers[0]].shape[-1]
    maps = {
        layer: torch.cat([pad(s.maps[layer], (0, keys - s.maps[layer].shape[-1])) for s in singles if s.maps])
        for layer in module.loss_cfg.layers
    }
    for layer in module.loss_cfg.layers:
        torch.testing.assert_close(step.maps[layer], maps[layer], atol=tol, rtol=0)
    supervision = convert(collate(order, samples["pad"])).supervision
    mask_loss = attention_mask_loss(maps, supervision, module.loss_cfg).loss
    torch.testing.assert_close(step.mask_loss, mask_loss, atol=tol, rtol=0)
    single_grads = _grads(module, composite_loss(text_loss, mask_loss, module.loss_cfg))
    module.model.to(torch.float32)
    assert packed_grads.keys() == single_grads.keys()
    for name, grad in packed_grads.items():
        expected = single_grads[name]
        if precision == "float64":
            torch.testing.assert_close(grad, expected, atol=tol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
        else:
            error = float((grad - expected).norm() / expected.norm().clamp_min(1e-12))
            assert error < GRAD_TOL_FP32, f"{name}: relative gradient error {error:.2e}"


def _hidden(module: SwimModule, batch: SwimBatch, **override: Any) -> torch.Tensor:
    with torch.no_grad():
        inputs = {**batch.model_inputs(), **override}
        return module.model.model(**inputs, use_cache=False).last_hidden_state[0]


def test_no_token_of_one_sample_is_visible_to_another(samples: dict[str, Any], module: SwimModule) -> None:
    first, second = samples["videos"]
    order = [first, samples["text"], second]
    packed = collate_packed(order, samples["pad"], samples["rope"])
    bounds = [*packed.supervision.sample_offset.tolist(), packed.input_ids.shape[1]]
    module.eval()
    base = _hidden(module, packed)
    for victim in range(len(order)):
        start, end = bounds[victim], bounds[victim + 1]
        text = packed.mm_token_type_ids[0, start:end] == 0
        perturbed = packed.input_ids.clone()
        perturbed[0, start:end][text] = (perturbed[0, start:end][text] + 17) % 1000
        changed = _hidden(module, packed, input_ids=perturbed)
        for other in range(len(order)):
            span = slice(bounds[other], bounds[other + 1])
            if other == victim:
                assert not torch.allclose(changed[span], base[span])
            else:
                torch.testing.assert_close(changed[span], base[span], atol=1e-6, rtol=0)
    # the check has teeth: with a plain causal mask the later samples see the first one
    leaky = _hidden(module, packed, attention_mask=packed.attention_mask)
    assert not torch.allclose(leaky[bounds[1] :], base[bounds[1] :])


def test_probe_reads_flash_boundaries_like_the_block_mask() -> None:
    torch.manual_seed(0)
    length, heads, dim = 12, 4, 8
    query, key = torch.randn(1, heads, length, dim), torch.randn(1, 2, length, dim)
    cu = torch.tensor([0, 5, 9, 12], dtype=torch.int32)
    segment = torch.bucketize(torch.arange(length), cu[1:-1].long(), right=True)
    positions = torch.arange(length)
    block = (segment[:, None] == segment[None, :]) & (positions[None, :] <= positions[:, None])
    rows = torch.tensor([2, 5, 8, 11])
    common = (torch.zeros(4, dtype=torch.long), rows, torch.arange(4), 4, dim**-0.5)
    flash = row_attention(query, key, None, *common, cu_seq_lens=cu)
    sdpa = row_attention(query, key, block[None, None], *common)
    torch.testing.assert_close(flash, sdpa)
    assert float(flash[1, :, :5].sum()) == 0.0 and float(flash[1, :, 6:].sum()) == 0.0


def test_first_fit_rows_and_the_packed_sampler() -> None:
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(600, 1000, 20), rng.integers(20, 200, 200)])
    rows = packed_batches(lengths, np.arange(len(lengths)), 1024)
    assert all(int(lengths[r].sum()) <= 1024 for r in rows)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    with pytest.raises(ValueError, match=r"exceeds data\.max_tokens_per_batch=500"):
        packed_batches(lengths, np.arange(len(lengths)), 500)

    def sampler(**kwargs: Any) -> TokenBudgetSampler:
        return TokenBudgetSampler(
            range(len(lengths)), lengths, max_tokens=1024, seed=3, packing=True, **kwargs
        )

    one = sampler()
    epoch0, epoch1 = list(one), one.epoch_batches(1)
    assert len(epoch0) == len(one) == len(epoch1)
    assert epoch0 != epoch1 and sorted(map(sorted, epoch0)) == sorted(map(sorted, epoch1))
    assert epoch0 == list(sampler())
    fill = sum(int(lengths[r].sum()) for r in epoch0) / (1024 * len(epoch0))
    assert fill > 0.9, f"first-fit fills the rows ({fill:.0%})"
    one.start = 3
    assert list(one) == epoch0[3:]
    ranks = [list(sampler(num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    assert {i for rank in ranks for r in rank for i in r} == set(range(len(lengths)))


def test_the_datamodule_yields_packed_rows(small_demo: Path, processor: Any, tmp_path: Path) -> None:
    cfg = demo_data_config(small_demo, tmp_path, num_workers=0, packing=True, max_tokens_per_batch=2048)
    dm = SwimDataModule(cfg, processor, rope=mrope_of(BackboneConfig()))
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert all(b.packed and b.batch_size == 1 and b.input_ids.shape[1] <= 2048 for b in batches)
    assert sorted(i for b in batches for i in b.sample_ids) == sorted(r.id for r in dm.mixtures["train"])
    assert any(len(b.sample_ids) > 1 for b in batches)
    with pytest.raises(ValueError, match="rope"):
        SwimDataModule(cfg, processor)


def test_mrope_parameters_per_family_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert mrope_of(BackboneConfig(family="qwen2_5_vl")) == MRope(2, 4)
    assert mrope_of(BackboneConfig(family="qwen2_vl")) == MRope(2, None)
    assert mrope_of(BackboneConfig(family="qwen3_vl")) == MRope(2, None, cell_runs=True)
    with pytest.raises(ValueError, match="tokens_per_second=None"):
        MRope(2, 2.0, cell_runs=True)
    monkeypatch.setattr("swim.model.packing.PACKING_FAMILIES", ("qwen2_5_vl",))
    with pytest.raises(ValueError, match=r"data\.packing=true supports"):
        mrope_of(BackboneConfig(family="qwen3_vl"))


@pytest.mark.slow
@pytest.mark.parametrize("model, steps", [("tiny", 2), ("tiny_qwen3_vl", 3)])
def test_train_py_with_packing(
    model: str, steps: int, train_demo: Path, records_cache: Path, tmp_path: Path
) -> None:
    """``train.py data.packing=true`` on the 28 px train demo (Qwen3-VL's pipeline resizes it to 32 px);
    the demo packs into two rows, so three steps run into the second epoch."""
    run_dir = tmp_path / "run"
    overrides = [
        f"model={model}",
        "data.packing=true",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
    ]
    run_train_py([*FAST, *demo_overrides(train_demo, records_cache), *overrides])
    assert read_metrics(run_dir)["global_step"] == steps
