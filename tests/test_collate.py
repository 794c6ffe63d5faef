"""The batch contract at batch size > 1, mixing supervised, unsupervised, image and text-only samples,
and a forward of the tiny Qwen2.5-VL on the collated batch."""

# ruff: noqa: F811  (pytest fixtures imported from data_fixtures are re-bound as test arguments)
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from data_fixtures import (  # noqa: F401
    IMAGE_PAD_ID,
    SMALL_CFG,
    VIDEO_PAD_ID,
    processor,
    record,
    square_annotation,
    square_video,
    still_image,
)

from swim.data.batch import Supervision, SwimBatch, check_visual_keys, contiguous_keys
from swim.data.collate import collate
from swim.data.sample import Sample, SampleBuilder
from swim.data.schema import Turn
from swim.model.backbone import BackboneConfig, build_backbone

CFG = SMALL_CFG


@pytest.fixture(scope="module")
def samples(processor: Any, square_video: tuple[str, np.ndarray], still_image: str) -> list[Sample]:
    """Supervised video (2 instances), unsupervised video, image, text-only, supervised video again."""
    builder = SampleBuilder(processor, CFG)
    path, masks = square_video
    two = [square_annotation((0, 3), masks), square_annotation((4,), masks)]
    ask = Turn("user", "Is the <ins>red square</ins> right of the <ins>red dot</ins>?", 0)
    one = [square_annotation((1,), masks)]
    return [
        builder.build(
            record([ask, Turn("assistant", "No, the <ins>red dot</ins> is.")], video=path, annotation=two)
        ),
        builder.build(record([Turn("user", "What moves?", 0), Turn("assistant", "A square.")], video=path)),
        builder.build(
            record([Turn("user", "Describe it.", 0), Turn("assistant", "Noise.")], image=still_image)
        ),
        builder.build(record([Turn("user", "Hi."), Turn("assistant", "Hello there, how are you?")])),
        builder.build(
            record(
                [Turn("user", "Where is the <ins>square</ins>?", 0), Turn("assistant", "Left.")],
                video=path,
                annotation=one,
            )
        ),
    ]


def _check_contract(batch: SwimBatch, samples: list[Sample], pad_id: int) -> None:
    B = len(samples)
    L = max(len(s) for s in samples)
    sup = batch.supervision
    for name in ("input_ids", "attention_mask", "labels", "mm_token_type_ids"):
        assert getattr(batch, name).shape == (B, L), name
    for b, s in enumerate(samples):
        n = len(s)
        assert torch.equal(batch.input_ids[b, :n], s.input_ids)
        assert (batch.input_ids[b, n:] == pad_id).all() and (batch.attention_mask[b, n:] == 0).all()
        assert (batch.attention_mask[b, :n] == 1).all() and (batch.labels[b, n:] == -100).all()
    # Video spans point at video_pad tokens; grids agree with video_grid_thw rows in batch order.
    videos = [b for b, s in enumerate(samples) if s.video_grid_thw is not None]
    assert batch.video_grid_thw.shape == (len(videos), 3)
    assert batch.pixel_values_videos.shape[0] == int(batch.video_grid_thw.prod(dim=1).sum())
    for v, b in enumerate(videos):
        T, h, w = sup.grid[b].tolist()
        assert batch.video_grid_thw[v].tolist() == [T, 2 * h, 2 * w]
        start = int(sup.visual_keys[b][0])
        assert sup.visual_keys[b].tolist() == list(range(start, start + T * h * w))
        assert (batch.input_ids[b, start : start + T * h * w] == VIDEO_PAD_ID).all()
        assert (batch.input_ids[b] == VIDEO_PAD_ID).sum() == T * h * w
    for b, s in enumerate(samples):
        if s.video_grid_thw is None:
            assert sup.visual_keys[b].numel() == 0 and sup.grid[b].tolist() == [0, 0, 0]
    images = [b for b, s in enumerate(samples) if s.image_grid_thw is not None]
    assert batch.image_grid_thw.shape == (len(images), 3)
    assert batch.pixel_values.shape[0] == int(batch.image_grid_thw.prod(dim=1).sum())
    # Rows: batch index, positions inside the sample's sequence after its visual span, global indices.
    R = sum(len(s.rows) for s in samples)
    for name in ("row_sample", "row_query", "row_token", "row_instance", "row_phrase"):
        assert getattr(sup, name).shape == (R,), name
    N = sum(len(s.cell_masks) for s in samples)
    assert sup.instance_sample.shape == (N,) and len(sup.cell_masks) == len(sup.cell_valid) == N
    assert len(sup.pixel_masks) == N
    for r in range(R):
        b, i = int(sup.row_sample[r]), int(sup.row_instance[r])
        assert int(sup.instance_sample[i]) == b
        T, h, w = sup.grid[b].tolist()
        assert int(sup.row_query[r]) > int(sup.visual_keys[b][-1])
        assert sup.cell_masks[i].shape == (T, h, w) and sup.cell_valid[i].shape == (T,)
        assert sup.pixel_masks[i].shape == (T, 28 * h, 28 * w)
    assert sup.row_phrase.unique().numel() == sum(len(s.phrases) for s in samples)


def test_batch_of_three(processor: Any, samples: list[Sample]) -> None:
    pad_id = processor.tokenizer.pad_token_id
    three = samples[:3]
    batch = collate(three, pad_id)
    _check_contract(batch, three, pad_id)
    sup = batch.supervision
    assert sup.row_sample.unique().tolist() == [0]
    assert sup.row_instance.unique().tolist() == [0, 1] and sup.instance_sample.tolist() == [0, 0]
    assert batch.sample_ids == [s.id for s in three]
    assert batch.counters == {"tags/kept": 3}
    assert (batch.input_ids[2] == IMAGE_PAD_ID).sum() == int(batch.image_grid_thw[0].prod()) // 4


def test_global_indices_and_counters(processor: Any, samples: list[Sample]) -> None:
    pad_id = processor.tokenizer.pad_token_id
    batch = collate(samples, pad_id)
    _check_contract(batch, samples, pad_id)
    sup = batch.supervision
    last = sup.row_sample == 4
    assert sup.row_instance[last].unique().tolist() == [2] and sup.instance_sample.tolist() == [0, 0, 4]
    assert sup.row_phrase[last].unique().tolist() == [3]
    expected: dict[str, int] = {}
    for s in samples:
        for key, value in s.counters.items():
            expected[key] = expected.get(key, 0) + value
    assert batch.counters == expected
    moved = batch.to("cpu")
    assert torch.equal(moved.supervision.row_query, sup.row_query)


def test_unsupervised_only_batch(processor: Any, samples: list[Sample]) -> None:
    batch = collate([samples[3], samples[1]], processor.tokenizer.pad_token_id)
    assert batch.supervision.num_rows == 0 and batch.supervision.cell_masks == []
    assert batch.pixel_values is None and batch.video_grid_thw.shape == (1, 3)


def test_tiny_model_forward_on_a_collated_batch(processor: Any, samples: list[Sample]) -> None:
    model, _ = build_backbone(BackboneConfig())
    model.eval()
    batch = collate(samples[:4], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(**batch.model_inputs(), labels=batch.labels)
    assert out.logits.shape[:2] == batch.input_ids.shape
    assert torch.isfinite(out.loss)


def test_visual_keys_contract_runs_and_table() -> None:
    """Visual keys are per-sample positions in grid order: one run, several runs, or none."""
    one_run = contiguous_keys(3, (2, 1, 2))
    assert one_run.tolist() == [3, 4, 5, 6]
    # Two temporal cells of 1x2 tokens with 3 timestamp/marker tokens between them (Qwen3-VL's layout).
    two_runs = torch.tensor([4, 5, 9, 10])
    grid = torch.tensor([[2, 1, 2], [2, 1, 2], [0, 0, 0]])
    keys = [one_run, two_runs, torch.zeros(0, dtype=torch.long)]
    check_visual_keys(keys, grid)
    sup = Supervision.empty(3)
    sup.visual_keys, sup.grid = keys, grid
    index, valid = sup.key_table()
    assert index.tolist() == [[3, 4, 5, 6], [4, 5, 9, 10], [0, 0, 0, 0]]
    assert valid.tolist() == [[True] * 4, [True] * 4, [False] * 4]
    assert two_runs.view(2, 1, 2)[1, 0, 0] == 9  # token (t=1, i=0, j=0)
    with pytest.raises(ValueError, match=r"sample 1: 3 visual keys, expected T\*h\*w = 4"):
        check_visual_keys([one_run, two_runs[:3], keys[2]], grid)
    with pytest.raises(ValueError, match="sample 1: visual keys are not strictly increasing"):
        check_visual_keys([one_run, two_runs.flip(0), keys[2]], grid)
    assert Supervision.empty(2).key_table()[0].shape == (2, 0)
