"""Frame sampling and Qwen-style resolution fitting."""

from __future__ import annotations

import random

import numpy as np
import pytest
from transformers.video_utils import VideoMetadata

from swim.data.frames import (
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    fit_resolution,
    frame_pixel_cap,
    sample_frame_indices,
)
from swim.data.masks import instance_cell_masks
from swim.data.video import resize_frames


def test_annotated_frames_kept_including_first_and_last() -> None:
    frames = sample_frame_indices(300, [0, 299, 150, 7], max_frames=32)
    assert {0, 7, 150, 299} <= set(frames)
    assert len(frames) == 32
    assert frames == sorted(set(frames))


def test_no_annotation_is_the_uniform_grid() -> None:
    frames = sample_frame_indices(300, [], max_frames=32)
    assert frames == [round(p) for p in np.linspace(0, 299, 32)]


def test_fill_is_uniform_around_annotations() -> None:
    frames = sample_frame_indices(300, [0, 150, 299], max_frames=32)
    gaps = np.diff(frames)
    step = 299 / 31
    assert gaps.max() <= 2 * step
    assert gaps.min() >= 1


def test_annotated_out_of_range_named() -> None:
    with pytest.raises(ValueError, match=r"\[10, 12\]"):
        sample_frame_indices(10, [3, 10, 12])
    with pytest.raises(ValueError, match=r"\[-1\]"):
        sample_frame_indices(10, [-1])


def test_short_videos_use_every_frame() -> None:
    assert sample_frame_indices(1, [0]) == [0, 0]
    assert sample_frame_indices(1, []) == [0, 0]
    assert sample_frame_indices(2, [1]) == [0, 1]
    assert sample_frame_indices(5, [4]) == [0, 1, 2, 3, 4, 4]
    assert sample_frame_indices(6, [], max_frames=6) == [0, 1, 2, 3, 4, 5]


def test_odd_budget_rounded_down_and_duplicates_ignored() -> None:
    frames = sample_frame_indices(100, [5, 5, 5, 60], max_frames=7)
    assert len(frames) == 6
    assert {5, 60} <= set(frames)
    assert len(set(frames)) == 6


def test_too_many_annotated_frames_spread_evenly() -> None:
    annotated = list(range(0, 100, 2))
    frames = sample_frame_indices(100, annotated, max_frames=8)
    assert len(frames) == 8
    assert frames[0] == 0 and frames[-1] == 98
    assert set(frames) <= set(annotated)
    assert np.diff(frames).max() - np.diff(frames).min() <= 2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(0, [])
    with pytest.raises(ValueError, match="max_frames"):
        sample_frame_indices(10, [], max_frames=1)


def test_sampler_properties_on_random_cases() -> None:
    rng = random.Random(0)
    for _ in range(500):
        num_frames = rng.randint(1, 400)
        max_frames = rng.randint(2, 40)
        annotated = rng.sample(range(num_frames), rng.randint(0, min(num_frames, 40)))
        frames = sample_frame_indices(num_frames, annotated, max_frames)
        budget = max_frames - max_frames % 2
        assert len(frames) % 2 == 0 and len(frames) <= max_frames
        assert frames == sorted(frames)
        assert all(0 <= f < num_frames for f in frames)
        if len(annotated) <= budget:
            assert set(annotated) <= set(frames)
        if num_frames > budget:
            assert len(set(frames)) == budget


def test_fit_resolution_hand_examples() -> None:
    # 720x1280: rounds to 728x1288 = 937,664 px > 768*28*28 = 602,112, so scale by
    # beta = sqrt(921,600 / 602,112) = 1.2372: 720/beta = 582.0 -> 560, 1280/beta = 1034.6 -> 1008.
    assert fit_resolution(720, 1280, 32) == (560, 1008)
    # 112x112 = 12,544 px < 128*28*28: beta = sqrt(8), 112*2.83 = 316.8 -> ceil to 336.
    assert fit_resolution(112, 112, 4) == (336, 336)
    # 480x854 rounds to 476x840 (17 and 30.5 -> 30 cells): inside the bounds, kept.
    assert fit_resolution(480, 854, 32) == (476, 840)
    # A small total budget: cap = max(128*784*16/32*2, 1.05*128*784) = 105,369 px;
    # beta = sqrt(921,600 / 105,369) = 2.957: 243.5 -> 224, 432.8 -> 420.
    assert fit_resolution(720, 1280, 32, total_pixels=128 * 28 * 28 * 16) == (224, 420)
    # The tiny demo keeps 112x112 with a lower floor.
    assert fit_resolution(112, 112, 4, min_pixels=16 * 28 * 28) == (112, 112)


def test_frame_pixel_cap() -> None:
    assert frame_pixel_cap(32) == VIDEO_MAX_PIXELS
    assert frame_pixel_cap(2000) == int(VIDEO_MIN_PIXELS * 1.05)
    assert frame_pixel_cap(4, total_pixels=4 * 200_000) == 400_000


def test_fit_resolution_properties() -> None:
    rng = random.Random(1)
    for _ in range(500):
        height, width = rng.randint(100, 2000), rng.randint(100, 2000)
        if max(height, width) / min(height, width) > 4:
            continue
        num_frames = rng.choice([2, 8, 32, 64])
        total = rng.choice([24576 * 28 * 28, 4096 * 28 * 28])
        out_h, out_w = fit_resolution(height, width, num_frames, total_pixels=total)
        assert out_h % 28 == 0 and out_w % 28 == 0
        cap = frame_pixel_cap(num_frames, total_pixels=total)
        # Within the cap, except where scaling up to min_pixels overshoots by under one step per
        # side (Qwen's smart_resize ceils there; the cap is only 5% above the floor then).
        assert out_h * out_w <= cap or (out_h - 28) * (out_w - 28) < VIDEO_MIN_PIXELS
        assert out_h * out_w >= VIDEO_MIN_PIXELS or out_h * out_w > cap - 28 * (out_h + out_w)
        # Each side is off its exact scaled value by less than one 28 px step.
        bound = np.log(out_h / (out_h - 28)) + np.log(out_w / (out_w - 28))
        assert abs(np.log((out_h / out_w) / (height / width))) < bound


def test_fit_resolution_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        fit_resolution(10, 2010, 4)
    with pytest.raises(ValueError, match="positive"):
        fit_resolution(0, 100, 4)


def test_resized_frames_and_masks_match_the_processor_grid() -> None:
    from swim.model.backbone import build_processor

    processor = build_processor()
    frames = np.random.default_rng(0).integers(0, 256, (6, 50, 80, 3), dtype=np.uint8)
    sampled = sample_frame_indices(6, [1], max_frames=4)
    height, width = fit_resolution(50, 80, len(sampled), min_pixels=4 * 28 * 28)
    assert (height, width) == (56, 84)
    video = resize_frames(frames[sampled], height, width)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Look."}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    meta = VideoMetadata(total_num_frames=len(sampled), fps=4.0, frames_indices=list(range(len(sampled))))
    out = processor(
        text=[text], videos=[video], videos_kwargs={"video_metadata": [meta]}, return_tensors="pt"
    )
    assert out["video_grid_thw"].tolist() == [[2, 4, 6]]
    masks = instance_cell_masks(
        {1: [[0, 0, 80, 0, 80, 50, 0, 50]]}, sampled, (50, 80), (height, width), pixel_masks=False
    )
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert int((out["input_ids"] == video_id).sum()) == masks.cell_masks.numel() == 2 * 2 * 3
