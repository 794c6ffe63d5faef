"""SampleBuilder on real mp4 files (PyAV-written, decord-read), real RLE masks and the real processor."""

# ruff: noqa: F811  (pytest fixtures imported from data_fixtures are re-bound as test arguments)
from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch
from data_fixtures import (  # noqa: F401
    IMAGE_PAD_ID,
    SMALL_CFG,
    SQUARE_HW,
    VIDEO_PAD_ID,
    processor,
    record,
    square_annotation,
    square_video,
    still_image,
)

from swim.data.sample import STAGES, DataConfig, SampleBuilder
from swim.data.schema import SampleError, Turn

CFG = SMALL_CFG
ASK = Turn("user", "Describe the <ins>red square</ins>.", 0)
SAY = Turn("assistant", "The <ins>red square</ins> slides right.")


@pytest.fixture(scope="module")
def builder(processor: Any) -> SampleBuilder:
    return SampleBuilder(processor, CFG)


def test_supervised_video_sample(builder: SampleBuilder, square_video: tuple[str, np.ndarray]) -> None:
    path, masks = square_video
    annotated = (0, 3, 6)
    sample = builder.build(record([ASK, SAY], video=path, annotation=[square_annotation(annotated, masks)]))
    T, h, w = sample.grid
    assert (T, h, w) == (4, 2, 3)
    assert sample.video_grid_thw.tolist() == [[T, 2 * h, 2 * w]]
    assert sample.pixel_values_videos.shape == (T * 2 * h * 2 * w, 3 * 2 * 14 * 14)
    start = int(sample.visual_keys[0])
    assert sample.visual_keys.tolist() == list(range(start, start + T * h * w))
    span = sample.input_ids[start : start + T * h * w]
    assert (span == VIDEO_PAD_ID).all() and (sample.input_ids == VIDEO_PAD_ID).sum() == T * h * w
    assert (sample.mm_token_type_ids[start : start + T * h * w] == 2).all()
    assert len(sample.input_ids) == len(sample.labels) == len(sample.attention_mask)
    assert sample.phrases == ["red square", "red square"]
    assert sample.counters == {"tags/kept": 2}
    assert (sample.rows.instance == 0).all()
    assert (sample.rows.query > start + T * h * w - 1).all()
    assert sample.second_per_grid_ts.tolist() == [0.5]  # 8 of 8 frames at 4 fps, 2 frames per cell
    # Cells (0,1), (2,3), (4,5), (6,7): annotated frames 0, 3, 6 leave cell 2 without ground truth.
    (cells,), (valid,), (pixels,) = sample.cell_masks, sample.cell_valid, sample.pixel_masks
    assert (
        cells.shape == (T, h, w)
        and pixels.shape == (T, *SQUARE_HW)
        and valid.tolist() == [True, True, False, True]
    )
    expected = torch.from_numpy(masks[0]).float()
    assert torch.equal(pixels[0], expected), "cell 0 is frame 0's mask (frame 1 unannotated)"
    assert torch.allclose(cells, pixels.reshape(T, h, 28, w, 28).mean(dim=(2, 4)))


def test_unannotated_cells_are_invalid(builder: SampleBuilder, square_video: tuple[str, np.ndarray]) -> None:
    path, masks = square_video
    sample = builder.build(record([ASK, SAY], video=path, annotation=[square_annotation((2,), masks)]))
    assert sample.cell_valid[0].tolist() == [False, True, False, False]
    assert sample.cell_masks[0][[0, 2, 3]].sum() == 0


def test_instance_without_annotated_frames_is_dropped(
    builder: SampleBuilder, square_video: tuple[str, np.ndarray]
) -> None:
    path, masks = square_video
    ask = Turn("user", "Is the <ins>red square</ins> near the <ins>blue dot</ins>?", 0)
    sample = builder.build(
        record([ask, Turn("assistant", "No.")], video=path, annotation=[square_annotation((1,), masks), {}])
    )
    assert sample.phrases == ["red square"]
    assert sample.counters == {"tags/kept": 1, "tag_dropped/no_valid_cell": 1}
    assert (
        len(sample.cell_masks) == 1 and (sample.rows.instance == 0).all() and (sample.rows.phrase == 0).all()
    )


def test_unsupervised_video_and_text_only(
    builder: SampleBuilder, square_video: tuple[str, np.ndarray]
) -> None:
    path, masks = square_video
    sample = builder.build(
        record([ASK, SAY], video=path, annotation=[square_annotation((0,), masks)], supervise=False)
    )
    assert len(sample.rows) == 0 and sample.cell_masks == [] and sample.grid == (4, 2, 3)
    assert sample.counters == {"tag_dropped/unsupervised": 2}
    text = builder.build(record([Turn("user", "Hi <ins>you</ins>"), Turn("assistant", "Hello.")]))
    assert text.visual_keys.numel() == 0 and text.grid == (0, 0, 0) and text.pixel_values_videos is None
    assert text.counters == {"tag_dropped/no_video": 1}
    assert (text.labels != -100).sum() == 3  # "Hello", ".", <|im_end|>


def test_image_sample(builder: SampleBuilder, still_image: str) -> None:
    sample = builder.build(record([ASK, SAY], image=still_image))
    # 60x90 -> 56x84 (multiples of 28, within 16 tokens): 2x3 tokens.
    assert sample.image_grid_thw.tolist() == [[1, 4, 6]]
    assert (sample.input_ids == IMAGE_PAD_ID).sum() == 6
    assert sample.visual_keys.numel() == 0 and len(sample.rows) == 0
    assert sample.counters == {"tag_dropped/no_video": 2}


def test_too_long_is_rejected(processor: Any, square_video: tuple[str, np.ndarray]) -> None:
    short = SampleBuilder(processor, DataConfig(max_frames=8, min_pixels=4 * 28 * 28, max_length=40))
    with pytest.raises(SampleError) as info:
        short.build(record([ASK, SAY], video=square_video[0], index=5))
    assert info.value.rejection.reason == "too_long"
    assert "record 5" in str(info.value) and "max_length=40" in str(info.value)


def test_missing_image_and_out_of_range_masks(
    builder: SampleBuilder, square_video: tuple[str, np.ndarray]
) -> None:
    with pytest.raises(SampleError) as info:
        builder.build(record([ASK, SAY], image="/nonexistent/x.png"))
    assert info.value.rejection.reason == "missing_image"
    path, masks = square_video
    beyond = {"40": {"segmentation": square_annotation((0,), masks)["0"]["segmentation"]}}
    with pytest.raises(SampleError) as info:
        builder.build(record([ASK, SAY], video=path, annotation=[beyond]))
    assert (info.value.rejection.reason, info.value.rejection.field) == (
        "frame_out_of_range",
        'annotation[0]["40"]',
    )


def test_load_visual(builder: SampleBuilder, square_video: tuple[str, np.ndarray]) -> None:
    path, masks = square_video
    visual = builder.load_visual(
        record([ASK, SAY], video=path, annotation=[square_annotation((0, 5), masks)])
    )
    assert visual.frames.shape == (8, *SQUARE_HW, 3) and visual.frames.dtype == np.uint8
    assert visual.frame_indices == list(range(8))
    assert visual.annotated[0].tolist() == [f in (0, 5) for f in range(8)]
    assert np.array_equal(visual.masks[0][5], masks[5]) and not visual.masks[0][1].any()
    assert visual.phrases == ["red square", "red square"] and visual.phrase_instance == [0, 0]
    red = visual.frames[5][masks[5]].mean(axis=0)
    assert red[0] > 150 and red[1] < 100, "the mask sits on the red square's pixels"


def test_stage_times_only_when_enabled(processor: Any, square_video: tuple[str, np.ndarray]) -> None:
    builder = SampleBuilder(processor, CFG)
    rec = record([ASK, SAY], video=square_video[0], annotation=[square_annotation((0,), square_video[1])])
    builder.build(rec)
    assert dict(builder.stopwatch.seconds) == {}
    builder.stopwatch.enabled = True
    builder.build(rec)
    assert set(builder.stopwatch.seconds) == set(STAGES) - {"read_record"}
    assert all(v > 0 for v in builder.stopwatch.seconds.values())


def test_builder_pickles(builder: SampleBuilder, square_video: tuple[str, np.ndarray]) -> None:
    copy = pickle.loads(pickle.dumps(builder))
    rec = record([ASK, SAY], video=square_video[0], annotation=[square_annotation((0,), square_video[1])])
    assert torch.equal(copy.build(rec).input_ids, builder.build(rec).input_ids)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_supervised_video_sample_of_each_family(family: str, square_video: tuple[str, np.ndarray]) -> None:
    """The same record at each family's geometry and layout; keys are found by token id."""
    from swim.model.families import get_family

    adapter = get_family(family)
    spec = adapter.spec
    builder = SampleBuilder(
        adapter.build_processor(), DataConfig(**{**vars(CFG), "min_pixels": 4 * 32 * 32}), spec
    )
    path, masks = square_video
    sample = builder.build(record([ASK, SAY], video=path, annotation=[square_annotation((0, 3, 6), masks)]))
    T, h, w = sample.grid
    px = spec.token_px
    assert sample.video_grid_thw.tolist() == [[T, 2 * h, 2 * w]]
    assert sample.pixel_values_videos.shape == (T * 4 * h * w, 3 * 2 * spec.patch_size**2)
    keys = sample.visual_keys
    assert keys.numel() == T * h * w and (sample.input_ids[keys] == VIDEO_PAD_ID).all()
    assert (sample.input_ids == VIDEO_PAD_ID).sum() == T * h * w
    assert torch.equal((sample.mm_token_type_ids == 2).nonzero().flatten(), keys)
    runs = keys.view(T, h * w)
    assert (runs[:, 1:] - runs[:, :-1] == 1).all(), "each temporal cell is one run"
    gaps = (runs[1:, 0] - runs[:-1, -1]).tolist()
    if spec.layout == "timestamped":
        assert all(gap > 3 for gap in gaps), "timestamp text and markers lie between the cells"
        assert sample.second_per_grid_ts is None
        text = builder.tokenizer.decode(sample.input_ids[: int(keys[0])])
        assert text.endswith("<0.1 seconds><|vision_start|>")  # frames 0 and 1 at 4 fps
    else:
        assert gaps == [1] * (T - 1)
    assert (sample.rows.query > keys[-1]).all() and sample.counters == {"tags/kept": 2}
    (cells,), (pixels,) = sample.cell_masks, sample.pixel_masks
    assert cells.shape == (T, h, w) and pixels.shape == (T, h * px, w * px)
    assert torch.allclose(cells, pixels.reshape(T, h, px, w, px).mean(dim=(2, 4)))
