"""Segmentation decoding and per-cell ground truth, with real pycocotools."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from swim.data.masks import (
    compressed_counts,
    decode_frame_masks,
    decode_segmentation,
    decoded_mask_count,
    instance_cell_masks,
    resize_mask_nearest,
)
from swim.data.schema import SampleError

H, W = 40, 50


def hand_mask() -> np.ndarray:
    """``(40, 50)`` bool: rows 5..19, columns 10..29."""
    mask = np.zeros((H, W), dtype=bool)
    mask[5:20, 10:30] = True
    return mask


def compressed(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def uncompressed(mask: np.ndarray) -> dict[str, Any]:
    """Column-major run lengths, starting with a run of zeros, computed without pycocotools."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": list(mask.shape), "counts": runs}


def full_frame(height: int, width: int) -> dict[str, Any]:
    return compressed(np.ones((height, width), dtype=bool))


def reason_of(call: Any) -> tuple[str, str]:
    with pytest.raises(SampleError) as caught:
        call()
    return caught.value.rejection.reason, caught.value.rejection.field


@pytest.mark.parametrize(
    "segmentation",
    [
        compressed(hand_mask()),
        {**compressed(hand_mask()), "counts": compressed(hand_mask())["counts"].encode()},
        uncompressed(hand_mask()),
        [[10, 5, 30, 5, 30, 20, 10, 20]],
        [10, 5, 30, 5, 30, 20, 10, 20],
        {"segmentation": compressed(hand_mask())},
    ],
    ids=["compressed", "compressed_bytes", "uncompressed", "polygons", "flat_polygon", "wrapped"],
)
def test_decode_equals_hand_mask(segmentation: Any) -> None:
    mask = decode_segmentation(segmentation, H, W)
    assert mask.dtype == bool and mask.shape == (H, W)
    assert np.array_equal(mask, hand_mask())


def test_polygons_are_merged() -> None:
    polygons = [[0, 0, 10, 0, 10, 10, 0, 10], [40, 30, 50, 30, 50, 40, 40, 40]]
    mask = decode_segmentation(polygons, H, W)
    assert mask[:10, :10].all() and mask[30:, 40:].all()
    assert mask.sum() == 200


def test_compressed_counts_match_pycocotools_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(1, 80, 2)
        mask = rng.random((height, width)) < rng.random()
        assert compressed_counts(compressed(mask)["counts"]) == uncompressed(mask)["counts"]


def test_size_mismatch() -> None:
    reason, field = reason_of(
        lambda: decode_segmentation(compressed(hand_mask()), W, H, field="annotation[0]")
    )
    assert (reason, field) == ("mask_size_mismatch", "annotation[0]")


@pytest.mark.parametrize(
    "segmentation",
    [
        {"size": [H, W], "counts": "!!!!"},
        {"size": [H, W], "counts": "0000"},
        {"size": [H, W], "counts": "P"},
        {"size": [H, W], "counts": "Zz"},
        {"size": [H, W], "counts": [H * W - 1]},
        {"size": [H, W], "counts": [H * W + 5, -5]},
        {"size": [H, W], "counts": [1.5, H * W - 1.5]},
        {"size": [H, W], "counts": 7},
        {"size": "40x50", "counts": "0"},
        {"counts": "0"},
        [[1, 2, 3, 4]],
        [[1, 2, 3, 4, 5, 6, 7]],
        [[1, 2, float("nan"), 4, 5, 6]],
        [],
        None,
    ],
)
def test_undecodable_segmentations_are_bad_rle(segmentation: Any) -> None:
    reason, _ = reason_of(lambda: decode_segmentation(segmentation, H, W))
    assert reason == "bad_rle"


def test_resize_mask_nearest_uses_pixel_centres() -> None:
    mask = np.zeros((2, 2), dtype=bool)
    mask[0, 1] = True
    up = resize_mask_nearest(mask, 4, 6)
    assert up[:2, 3:].all() and up.sum() == 6
    assert np.array_equal(resize_mask_nearest(up, 2, 2), mask)


def test_area_downsampling_on_a_hand_case() -> None:
    # Video 56x84 at its own size: a 2x3 token grid. Half of block (0, 0), all of (1, 2),
    # a quarter of (0, 1).
    mask = np.zeros((56, 84), dtype=bool)
    mask[:28, :14] = True
    mask[28:, 56:] = True
    mask[:14, 28:42] = True
    out = instance_cell_masks({0: compressed(mask)}, [0, 1], (56, 84), (56, 84), pixel_masks=True)
    expected = torch.tensor([[[0.5, 0.25, 0.0], [0.0, 0.0, 1.0]]])
    assert torch.equal(out.cell_masks, expected)
    assert out.pixel_masks is not None
    assert torch.equal(out.pixel_masks, torch.from_numpy(mask).float()[None])


def test_cells_union_validity_and_frame_zero() -> None:
    left = np.zeros((56, 56), dtype=bool)
    left[:, :28] = True
    top = np.zeros((56, 56), dtype=bool)
    top[:28, :] = True
    instance = {"0": compressed(left), "3": {"segmentation": compressed(top)}, "7": compressed(left)}
    # Cells: (0, 1) frame 0 annotated; (2, 3) second frame; (4, 5) none; (7, 8) first frame.
    frames = [0, 1, 2, 3, 4, 5, 7, 8]
    out = instance_cell_masks(instance, frames, (56, 56), (112, 112), pixel_masks=True, num_frames=9)
    assert out.cell_valid.tolist() == [True, True, False, True]
    assert out.cell_masks.shape == (4, 4, 4)
    assert torch.equal(out.cell_masks[0], torch.tensor([[1.0, 1, 0, 0]] * 4))
    assert torch.equal(out.cell_masks[1], torch.tensor([[1.0] * 4] * 2 + [[0.0] * 4] * 2))
    assert not out.cell_masks[2].any()
    assert torch.equal(out.cell_masks[3], out.cell_masks[0])
    assert out.pixel_masks is not None and out.pixel_masks.shape == (4, 112, 112)
    assert not out.pixel_masks[2].any()


def test_union_of_both_frames_of_a_cell() -> None:
    left = np.zeros((56, 56), dtype=bool)
    left[:, :28] = True
    top = np.zeros((56, 56), dtype=bool)
    top[:28, :] = True
    out = instance_cell_masks(
        {4: compressed(left), 5: compressed(top)}, [4, 5], (56, 56), (56, 56), pixel_masks=False
    )
    assert out.pixel_masks is None
    assert torch.equal(out.cell_masks[0], torch.tensor([[1.0, 1.0], [1.0, 0.0]]))


def test_repeated_frame_of_a_one_frame_video() -> None:
    out = instance_cell_masks({0: full_frame(28, 28)}, [0, 0], (28, 28), (56, 56), pixel_masks=False)
    assert out.cell_valid.tolist() == [True]
    assert torch.equal(out.cell_masks, torch.ones(1, 2, 2))


def test_only_sampled_annotated_frames_are_decoded() -> None:
    instance = {str(f): {"segmentation": full_frame(28, 28)} for f in range(100)}
    frames = [0, 13, 27, 40, 54, 67, 81, 99]
    before = decoded_mask_count()
    masks = decode_frame_masks(instance, frames, (28, 28), num_frames=100)
    assert decoded_mask_count() - before == len(frames)
    assert sorted(masks) == frames
    out = instance_cell_masks(instance, frames, (28, 28), (28, 28), pixel_masks=False, decoded=masks)
    assert decoded_mask_count() - before == len(frames)
    assert out.cell_valid.all()
    instance_cell_masks(instance, frames, (28, 28), (28, 28), pixel_masks=False)
    assert decoded_mask_count() - before == 2 * len(frames)


def test_annotation_beyond_the_video() -> None:
    instance = {"2": full_frame(28, 28), "12": full_frame(28, 28), "15": full_frame(28, 28)}
    with pytest.raises(SampleError, match=r"\[12, 15\]") as caught:
        instance_cell_masks(
            instance, [0, 2], (28, 28), (28, 28), pixel_masks=False, num_frames=10, file="a.json", index=4
        )
    rejection = caught.value.rejection
    assert (rejection.reason, rejection.file, rejection.index) == ("frame_out_of_range", "a.json", 4)
    assert rejection.field == 'annotation[0]["12"]'


def test_error_names_the_frame_field() -> None:
    instance = {"3": {"segmentation": {"size": [28, 28], "counts": "junk!"}}}
    with pytest.raises(SampleError) as caught:
        instance_cell_masks(instance, [2, 3], (28, 28), (28, 28), pixel_masks=False, field="annotation[1]")
    assert caught.value.rejection.reason == "bad_rle"
    assert caught.value.rejection.field == 'annotation[1]["3"]'


@pytest.mark.parametrize("key", ["x", "-1", -1, True, "\u0661"])
def test_bad_frame_keys(key: Any) -> None:
    reason, _ = reason_of(
        lambda: instance_cell_masks({key: full_frame(28, 28)}, [0, 1], (28, 28), (28, 28), pixel_masks=False)
    )
    assert reason == "bad_frame_index"


def test_repeated_frame_key() -> None:
    instance = {"1": full_frame(28, 28), 1: full_frame(28, 28)}
    reason, _ = reason_of(lambda: decode_frame_masks(instance, [0, 1], (28, 28)))
    assert reason == "bad_frame_index"


def test_bad_geometry_arguments() -> None:
    with pytest.raises(ValueError, match="even"):
        instance_cell_masks({}, [0, 1, 2], (28, 28), (28, 28), pixel_masks=False)
    with pytest.raises(ValueError, match="multiple of 28"):
        instance_cell_masks({}, [0, 1], (28, 28), (30, 28), pixel_masks=False)
