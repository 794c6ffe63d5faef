"""``loss=reference``: each deviation of the reference code as a switch, held to hand-computed values
of the reference's formulas (METHOD.md section 9), and our defaults where they differ."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from data_fixtures import processor  # noqa: F401
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from pycocotools import mask as mask_utils

from swim.data.batch import Supervision, contiguous_keys
from swim.data.chat import align, render_chat, tokenize_chat
from swim.data.config import REFERENCE_SYSTEM_PROMPT
from swim.data.masks import instance_cell_masks
from swim.data.schema import Turn
from swim.losses import LossConfig, attention_mask_loss
from swim.losses.mask_loss import minmax_normalise
from swim.model.probe import row_attention
from swim.train.resolvers import register_resolvers

CONF = Path(__file__).resolve().parents[1] / "conf"
REFERENCE = {
    "causal": False,
    "renormalise": "reference",
    "minmax": "reference",
    "cell_rule": "reference",
    "label_span": "reference",
    "mask_resolution": "original",
}


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``F.interpolate(align_corners=False)``'s 1-D weights, written out independently."""
    weights = np.zeros((size_out, size_in))
    for i in range(size_out):
        x = max((i + 0.5) * size_in / size_out - 0.5, 0.0)
        low = min(math.floor(x), size_in - 1)
        high = min(low + 1, size_in - 1)
        weights[i, low] += 1.0 - (x - low)
        weights[i, high] += x - low
    return weights


def _reference_loss_by_hand(
    layers: list[np.ndarray], mask: np.ndarray, cell: int, grid: tuple[int, int]
) -> float:
    """The reference's fusion, per-cell min-max, upsampling and BCE on one row's maps (numpy)."""
    product = np.prod(np.stack(layers), axis=0)
    fused = product / (product.sum() + 1e-6)
    h, w = grid
    x = fused[cell * h * w : (cell + 1) * h * w].reshape(h, w)
    x = (x - x.min()) / (x.max() - x.min() + 1e-6)
    up = _bilinear_matrix(h, mask.shape[0]) @ x @ _bilinear_matrix(w, mask.shape[1]).T
    log_p = np.maximum(np.log(np.where(up > 0, up, 1e-300)), -100.0)
    log_q = np.maximum(np.log(np.where(1 - up > 0, 1 - up, 1e-300)), -100.0)
    return float(-(mask * log_p + (1 - mask) * log_q).mean())


def _one_row(maps: dict[int, torch.Tensor], mask: torch.Tensor) -> Supervision:
    """One sample of grid (2, 2, 3) whose cell 1 alone has ground truth ``mask`` (pixels)."""
    pixel = torch.stack([torch.zeros_like(mask), mask])
    cells = torch.nn.functional.adaptive_avg_pool2d(pixel[None], (2, 3))[0]
    return Supervision(
        row_sample=torch.tensor([0]),
        row_query=torch.tensor([9]),
        row_token=torch.tensor([10]),
        row_instance=torch.tensor([0]),
        row_phrase=torch.tensor([0]),
        visual_keys=[contiguous_keys(2, (2, 2, 3))],
        grid=torch.tensor([[2, 2, 3]]),
        instance_sample=torch.tensor([0]),
        cell_masks=[cells],
        cell_valid=[torch.tensor([False, True])],
        pixel_masks=[pixel],
    )


@pytest.mark.parametrize("scale", [1.0, 1e-8])
def test_reference_loss_equals_its_formulas_by_hand(scale):
    """Two layers over 12 visual keys, a 7 x 10 mask at the video's own size; ``scale`` shrinks the
    layer maps as deep layers of a 7B model do (their product then sums far below 1e-6)."""
    gen = np.random.default_rng(0)
    layers = [gen.dirichlet(np.ones(20))[:12] * scale for _ in range(2)]
    mask = np.zeros((7, 10))
    mask[2:5, 3:9] = 1.0
    maps = {
        1: torch.tensor(layers[0], dtype=torch.float64)[None],
        4: torch.tensor(layers[1], dtype=torch.float64)[None],
    }
    supervision = _one_row(maps, torch.tensor(mask))
    expected = _reference_loss_by_hand(layers, mask, cell=1, grid=(2, 3))
    result = attention_mask_loss(maps, supervision, LossConfig(layers=[1, 4], **REFERENCE))
    assert result.num_pairs == 1
    assert math.isclose(float(result.loss), expected, rel_tol=1e-9), (float(result.loss), expected)
    ours = attention_mask_loss(maps, supervision, LossConfig(layers=[1, 4]))
    if scale < 1:
        # The reference's absolute epsilons make it another function at small magnitudes: its fused
        # row no longer sums to 1 and its normalised cell peaks far below 1; ours is scale-free.
        assert float(result.fused.sum()) < 0.5 and math.isclose(float(ours.fused.sum()), 1.0, rel_tol=1e-9)
        assert float(minmax_normalise(result.fused[:, 6:].view(1, 2, 3), mode="reference").max()) < 0.05
        peak = float(minmax_normalise(ours.fused[:, 6:].view(1, 2, 3)).max())
        assert math.isclose(peak, 1 - LossConfig(layers=[1]).squeeze, rel_tol=1e-9)


def test_non_causal_rows_are_the_full_row_softmax_by_hand():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(2, 2, 6, 4, generator=gen, dtype=torch.float64)
    key = torch.randn(2, 1, 6, 4, generator=gen, dtype=torch.float64)
    padding = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    rows = (torch.tensor([0, 1]), torch.tensor([2, 1]), torch.tensor([0, 0]))
    full = row_attention(query, key, None, *rows, 1, 0.5, causal=False, key_mask=padding)
    causal = row_attention(query, key, None, *rows, 1, 0.5)
    for r, (b, q) in enumerate([(0, 2), (1, 1)]):
        for h in range(2):
            scores = (query[b, h, q] @ key[b, 0].T) * 0.5
            scores[padding[b] == 0] = -math.inf
            torch.testing.assert_close(full[r, h], torch.softmax(scores, -1))
            scores[q + 1 :] = -math.inf
            torch.testing.assert_close(causal[r, h], torch.softmax(scores, -1))
    assert float(full[0, :, 3:].sum()) > 0 and float(causal[0, :, 3:].sum()) == 0.0
    assert float(full[1, :, 4:].sum()) == 0.0


def _rle(mask: np.ndarray) -> dict[str, Any]:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode("ascii")}


def test_reference_cell_rule_keeps_second_frames_and_the_frame_zero_sentinel():
    """Sampled frames (0, 3), (5, 8): masks on frames 0, 5 and 8 differ by position."""
    masks = {}
    for frame, column in ((0, 0), (5, 28), (8, 56)):
        mask = np.zeros((28, 84), dtype=bool)
        mask[:, column : column + 28] = True
        masks[frame] = mask
    frames = [0, 3, 5, 8]
    ours = instance_cell_masks(
        {str(f): _rle(m) for f, m in masks.items()}, frames, (28, 84), (28, 84), pixel_masks=True
    )
    reference = instance_cell_masks(
        {str(f): _rle(m) for f, m in masks.items()},
        frames,
        (28, 84),
        (28, 84),
        pixel_masks=True,
        cell_rule="reference",
    )
    # Ours: cell 0 = frame 0, cell 1 = frames 5 | 8. Reference: cell 0 has no annotated second frame
    # (3), so frame 0 by the sentinel; cell 1 = frame 8 alone (frame 5 is lost).
    assert ours.cell_masks[:, 0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
    assert reference.cell_masks[:, 0].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert reference.cell_valid.tolist() == [True, True]
    without_zero = {str(f): _rle(m) for f, m in masks.items() if f != 0}
    out = instance_cell_masks(
        without_zero, [0, 3, 5, 7], (28, 84), (28, 84), pixel_masks=False, cell_rule="reference"
    )
    assert out.cell_valid.tolist() == [False, False]
    out = instance_cell_masks(without_zero, [0, 3, 5, 7], (28, 84), (28, 84), pixel_masks=False)
    assert out.cell_valid.tolist() == [False, True]


def test_original_mask_resolution_keeps_the_video_size():
    mask = np.zeros((50, 70), dtype=bool)
    mask[10:30, 20:60] = True
    out = instance_cell_masks(
        {"1": _rle(mask)}, [0, 1], (50, 70), (56, 84), pixel_masks=True, mask_resolution="original"
    )
    assert out.pixel_masks.shape == (1, 50, 70)
    assert torch.equal(out.pixel_masks[0], torch.from_numpy(mask).float())
    assert out.cell_masks.shape == (1, 2, 3)


def test_reference_label_span_adds_the_assistant_header_and_the_final_newline(processor):  # noqa: F811
    turns = [Turn("user", "Describe the <ins>dog</ins>."), Turn("assistant", "A dog runs.")]
    decoded = {}
    for span in ("answer", "reference"):
        chat = render_chat(turns, processor=processor, system_prompt="S", visual=None, label_span=span)
        ids, offsets, pad = tokenize_chat(chat, processor.tokenizer)
        labels = align(chat, ids, offsets, pad, 0, num_instances=0, supervise=False).labels
        decoded[span] = processor.tokenizer.decode(labels[labels != -100])
    assert decoded["answer"] == "A dog runs.<|im_end|>"
    assert decoded["reference"] == "<|im_start|>assistant\nA dog runs.<|im_end|>\n"


def test_loss_reference_and_the_reference_experiments_compose_every_switch():
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        default = compose("train")
        for experiment in ("demo_reference", "swim_7b_reference"):
            cfg = compose("train", overrides=[f"experiment={experiment}"])
            loss = OmegaConf.to_container(cfg.loss, resolve=True)
            assert {key: loss[key] for key in REFERENCE} == REFERENCE
            LossConfig.from_mapping(loss)
            assert cfg.data.system_prompt == REFERENCE_SYSTEM_PROMPT
            for key in ("cell_rule", "label_span", "mask_resolution"):
                assert cfg.data[key] == loss[key]
    defaults = OmegaConf.to_container(default.loss, resolve=True)
    assert defaults["causal"] is True and defaults["minmax"] == defaults["renormalise"] == "exact"
    assert (default.data.cell_rule, default.data.label_span, default.data.mask_resolution) == (
        "union",
        "answer",
        "frame",
    )
