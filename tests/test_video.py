"""Opening and reading videos: real mp4 files written with PyAV and read with decord, frame folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from swim.data.schema import SampleError
from swim.data.video import VideoSource, natural_key, open_video, resize_frames, write_video

COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], dtype=np.uint8
)


def solid_frames(colours: np.ndarray, height: int = 112, width: int = 112) -> np.ndarray:
    """``(F, 3)`` colours -> ``(F, height, width, 3)`` uint8 frames of one colour each."""
    return np.broadcast_to(colours[:, None, None, :], (len(colours), height, width, 3)).copy()


def assert_colours(frames: np.ndarray, expected: np.ndarray, tolerance: int = 24) -> None:
    centre = frames[:, frames.shape[1] // 2, frames.shape[2] // 2].astype(int)
    assert np.abs(centre - expected.astype(int)).max() <= tolerance, (centre, expected)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "colours.mp4"
    write_video(str(path), solid_frames(COLOURS), fps=4.0)
    return path


def expect_reason(reason: str, path: Path | str, **kwargs: object) -> SampleError:
    with pytest.raises(SampleError) as caught:
        open_video(str(path), file="ann.json", index=7, field="video", **kwargs)
    rejection = caught.value.rejection
    assert rejection.reason == reason
    assert (rejection.file, rejection.index, rejection.field) == ("ann.json", 7, "video")
    assert str(path) in rejection.detail
    return caught.value


def test_mp4_metadata_and_chosen_frames(mp4: Path) -> None:
    source = open_video(str(mp4))
    assert (source.num_frames, source.height, source.width) == (6, 112, 112)
    assert source.fps == pytest.approx(4.0)
    assert source.frame_files is None
    indices = [5, 0, 3, 3]
    frames = source.read(indices)
    assert frames.shape == (4, 112, 112, 3) and frames.dtype == np.uint8
    assert_colours(frames, COLOURS[indices])


def test_source_pickles_without_reader_and_reopens(mp4: Path) -> None:
    source = open_video(str(mp4))
    source.read([1])
    clone = pickle.loads(pickle.dumps(source))
    assert clone._reader is None
    assert clone == source
    assert_colours(clone.read([2, 4]), COLOURS[[2, 4]])


def test_frame_folder_in_natural_order(tmp_path: Path) -> None:
    names = ["f1.jpg", "f2.JPEG", "f10.png", "f11.jpg"]
    for name, colour in zip(names, COLOURS, strict=False):
        Image.fromarray(solid_frames(colour[None], 60, 80)[0]).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / ".f0.jpg").write_bytes(b"hidden")
    source = open_video(str(tmp_path), default_fps=5.0)
    assert source.frame_files == tuple(names)
    assert (source.num_frames, source.height, source.width, source.fps) == (4, 60, 80, 5.0)
    assert_colours(source.read([3, 0, 2]), COLOURS[[3, 0, 2]], tolerance=8)
    assert_colours(pickle.loads(pickle.dumps(source)).read([1]), COLOURS[[1]], tolerance=8)


def test_natural_key() -> None:
    assert sorted(["f10", "F2", "f1"], key=natural_key) == ["f1", "F2", "f10"]


def test_missing_and_empty_inputs(tmp_path: Path) -> None:
    expect_reason("missing_video", tmp_path / "nope.mp4")
    (tmp_path / "zero.mp4").write_bytes(b"")
    expect_reason("empty_file", tmp_path / "zero.mp4")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "readme.txt").write_text("no frames here")
    expect_reason("empty_frame_folder", tmp_path / "frames")


def test_truncated_mp4_is_corrupt(mp4: Path, tmp_path: Path) -> None:
    data = mp4.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    expect_reason("corrupt_video", half)


def test_truncated_faststart_mp4_is_corrupt(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    full = tmp_path / "noise.mp4"
    write_video(str(full), noise, faststart=True)
    data = full.read_bytes()
    assert data[4:8] == b"ftyp" and b"moov" in data[: len(data) // 4]
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    expect_reason("corrupt_video", half)


def test_junk_bytes_are_corrupt(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expect_reason("corrupt_video", junk)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_image_given_as_video(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"still.{suffix}"
    Image.fromarray(solid_frames(COLOURS[:1], 32, 32)[0]).save(path)
    renamed = tmp_path / "still_really.mp4"
    renamed.write_bytes(path.read_bytes())
    error = expect_reason("not_a_video", renamed)
    assert "image file" in str(error)


def test_read_out_of_range(mp4: Path) -> None:
    source = open_video(str(mp4), file="ann.json", index=3)
    with pytest.raises(SampleError) as caught:
        source.read([0, 6])
    assert caught.value.rejection.reason == "frame_out_of_range"
    assert "[6]" in caught.value.rejection.detail
    with pytest.raises(ValueError, match="no frame indices"):
        source.read([])


def test_bad_frames_in_folder_are_corrupt(tmp_path: Path) -> None:
    Image.fromarray(solid_frames(COLOURS[:1], 40, 40)[0]).save(tmp_path / "0.jpg")
    Image.fromarray(solid_frames(COLOURS[:1], 40, 48)[0]).save(tmp_path / "1.jpg")
    (tmp_path / "2.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    source = open_video(str(tmp_path), file="ann.json", index=1)
    assert source.read([0]).shape == (1, 40, 40, 3)
    for frame, message in ((1, "40x48"), (2, "2.jpg")):
        with pytest.raises(SampleError, match=message) as caught:
            source.read([0, frame])
        assert caught.value.rejection.reason == "corrupt_video"


def test_video_source_constructed_directly_opens_lazily(mp4: Path) -> None:
    source = VideoSource(path=str(mp4), num_frames=6, fps=4.0, height=112, width=112)
    assert source._reader is None
    assert_colours(source.read([1]), COLOURS[[1]])


def test_resize_frames() -> None:
    frames = solid_frames(COLOURS[:2], 50, 70)
    resized = resize_frames(frames, 56, 84)
    assert resized.shape == (2, 56, 84, 3) and resized.dtype == np.uint8
    assert np.array_equal(resized, solid_frames(COLOURS[:2], 56, 84))
    assert resize_frames(frames, 50, 70) is frames
    with pytest.raises(ValueError, match="uint8"):
        resize_frames(frames.astype(np.float32), 28, 28)


class _Frames(torch.utils.data.Dataset):
    def __init__(self, source: VideoSource):
        self.source = source

    def __len__(self) -> int:
        return self.source.num_frames

    def __getitem__(self, i: int) -> np.ndarray:
        return self.source.read([i])[0]


def test_dataloader_workers_open_their_own_reader(mp4: Path) -> None:
    source = open_video(str(mp4))
    parent_reader = source._reader
    loader = torch.utils.data.DataLoader(_Frames(source), batch_size=3, num_workers=1)
    frames = torch.cat(list(loader)).numpy()
    assert_colours(frames, COLOURS)
    assert source._reader is parent_reader
