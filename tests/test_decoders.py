"""Decoder backends on real H.264 files we write with PyAV; the decode deadline; concealed corruption."""

from __future__ import annotations

import ctypes
import gc
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from swim.data import deadline
from swim.data.config import DataConfig
from swim.data.deadline import call_with_deadline
from swim.data.decoders import AUTO_ORDER, BACKENDS, DECODERS, PyAVDecoder, resolve_backend, unavailable
from swim.data.media import load_video_clip
from swim.data.schema import SampleError
from swim.data.video import VideoConfig, open_video, write_video

AVAILABLE = [backend for backend in BACKENDS if unavailable(backend) is None]
INDICES = [0, 3, 7, 8, 19, 25, 31, 39]

# Tolerances, per uint8 channel: backends decode the same H.264 stream, so they differ only by their
# YUV -> RGB conversion; against the lossless source frames the encoder's loss adds to that.
BETWEEN_BACKENDS_MEAN, BETWEEN_BACKENDS_MAX = 1.0, 8
AGAINST_SOURCE_MEAN = 4.0


def moving_frames(num: int = 40, height: int = 128, width: int = 160) -> np.ndarray:
    """``(num, height, width, 3)`` uint8: a gradient background that drifts and a red disc that moves."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.zeros((num, height, width, 3), np.uint8)
    for t in range(num):
        frames[t, ..., 0] = (xx * 200 // width + 2 * t) % 256
        frames[t, ..., 1] = yy * 255 // height
        frames[t, ..., 2] = 128
        frames[t, (yy - 30 - t) ** 2 + (xx - 20 - 2 * t) ** 2 < 200] = [250, 30, 30]
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """An H.264 mp4 (key frame every 10 frames), a PNG frame folder of the same frames, the frames."""
    root = tmp_path_factory.mktemp("decoders")
    frames = moving_frames()
    video = root / "moving.mp4"
    write_video(str(video), frames, fps=8.0, gop=10)
    folder = root / "moving_frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{t}.png")
    return video, folder, frames


def test_auto_picks_torchcodec_then_pyav_then_decord() -> None:
    first_working = next(backend for backend in AUTO_ORDER if unavailable(backend) is None)
    assert AUTO_ORDER == ("torchcodec", "pyav", "decord")
    assert resolve_backend("auto") == first_working
    with pytest.raises(ValueError, match="expected auto or one of"):
        VideoConfig(backend="ffmpeg-cli")
    for backend in BACKENDS:
        if backend not in AVAILABLE:
            with pytest.raises(ValueError, match=f"data.video.backend={backend}: .*cannot be imported"):
                resolve_backend(backend)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_every_backend_returns_the_same_frames(clip: tuple[Path, Path, np.ndarray], backend: str) -> None:
    video, folder, source = clip
    reference = open_video(str(video), backend="pyav").read(INDICES).astype(int)
    opened = open_video(str(video), backend=backend, num_threads=1)
    assert (opened.num_frames, opened.height, opened.width, opened.fps) == (40, 128, 160, 8.0)
    frames, errors = opened.read_counted(INDICES)
    assert frames.shape == (len(INDICES), 128, 160, 3) and frames.dtype == np.uint8 and errors == 0
    difference = np.abs(frames.astype(int) - reference)
    assert difference.mean() <= BETWEEN_BACKENDS_MEAN and difference.max() <= BETWEEN_BACKENDS_MAX
    assert np.abs(frames.astype(int) - source[INDICES]).mean() <= AGAINST_SOURCE_MEAN
    # The frame folder of the same frames is read at the same indices, whatever the backend.
    from_folder = open_video(str(folder), backend=backend).read(INDICES)
    assert np.array_equal(from_folder, source[INDICES])
    assert np.abs(frames.astype(int) - from_folder.astype(int)).mean() <= AGAINST_SOURCE_MEAN


def test_sampled_clip_is_the_same_with_every_backend(clip: tuple[Path, Path, np.ndarray]) -> None:
    video, folder, _ = clip
    annotation = [{"5": None, "33": None}]
    clips = [
        load_video_clip(str(video), DataConfig(max_frames=8, video={"backend": b}), annotation=annotation)
        for b in AVAILABLE
    ]
    from_folder = load_video_clip(str(folder), DataConfig(max_frames=8), annotation=annotation)
    for loaded in clips:
        assert loaded.frame_indices == from_folder.frame_indices and 5 in loaded.frame_indices
        assert loaded.frames.shape == from_folder.frames.shape
        difference = np.abs(loaded.frames.astype(int) - from_folder.frames.astype(int))
        assert difference.mean() <= AGAINST_SOURCE_MEAN


def packets_by_frame(path: Path) -> dict[int, tuple[int, int, bool]]:
    """Each frame's packet: frame index (presentation order) -> (byte offset, size, is key frame)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.pos, p.size, p.is_keyframe) for p in container.demux(stream) if p.size]
    return {frame: packet[1:] for frame, packet in enumerate(sorted(packets))}


def damage(path: Path, out: Path, frames: Sequence[int], *, how: str) -> None:
    """Copy ``path`` to ``out`` with the packets of ``frames`` damaged.

    ``how="flip"`` inverts 6 bytes in the second half of each packet (slice data: FFmpeg conceals
    it and logs an error); ``"length"`` overwrites each packet's 4-byte NAL length (FFmpeg refuses
    the packet). The damage lands in the same frames whatever bytes the encoder wrote.
    """
    data = bytearray(path.read_bytes())
    where = packets_by_frame(path)
    picks = random.Random(0)
    for frame in frames:
        pos, size, _ = where[frame]
        if how == "flip":
            for i in picks.sample(range(pos + size // 2, pos + size), 6):
                data[i] ^= 0xFF
        else:
            data[pos : pos + 4] = b"\xff\xff\xff\xff"
    out.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def corrupt(clip: tuple[Path, Path, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    noisy = np.random.default_rng(0).integers(0, 256, (40, 16, 20, 3), dtype=np.uint8)
    big = noisy.repeat(8, axis=1).repeat(8, axis=2)
    root = tmp_path_factory.mktemp("corrupt")
    write_video(str(root / "clean.mp4"), big, fps=8.0, gop=10)
    packets = packets_by_frame(root / "clean.mp4")
    damaged = [frame for frame in range(12, 16) if not packets[frame][2]]
    damage(root / "clean.mp4", root / "flipped.mp4", damaged, how="flip")
    damage(root / "clean.mp4", root / "broken.mp4", damaged[:1], how="length")
    return root


def test_concealed_corruption_is_counted_and_rejected_when_strict(corrupt: Path) -> None:
    assert PyAVDecoder(str(corrupt / "clean.mp4")).read(list(range(40)))[1] == 0
    frames, errors = PyAVDecoder(str(corrupt / "flipped.mp4")).read(list(range(40)))
    assert frames.shape == (40, 128, 160, 3) and errors > 0  # FFmpeg returned frames, but said so
    lenient = DataConfig(max_frames=40, video={"backend": "pyav"})
    loaded = load_video_clip(str(corrupt / "flipped.mp4"), lenient, file="ann.json", index=3)
    assert loaded.error_frames > 0  # which frames get the blame varies with FFmpeg's frame threads
    assert load_video_clip(str(corrupt / "clean.mp4"), lenient).error_frames == 0
    strict = DataConfig(max_frames=40, strict=True, video={"backend": "pyav"})
    with pytest.raises(SampleError) as caught:
        load_video_clip(str(corrupt / "flipped.mp4"), strict, file="ann.json", index=3)
    rejection = caught.value.rejection
    assert (rejection.file, rejection.index, rejection.field, rejection.reason) == (
        "ann.json",
        3,
        "video",
        "corrupt_frames",
    )


def test_a_refused_packet_is_counted_and_a_frame_it_loses_fails_the_read(corrupt: Path) -> None:
    packets = packets_by_frame(corrupt / "broken.mp4")
    lost = next(frame for frame in range(12, 16) if not packets[frame][2])
    key = max(frame for frame, (_, _, is_key) in packets.items() if is_key and frame <= lost)
    video = open_video(str(corrupt / "broken.mp4"), backend="pyav", file="ann.json", index=5)
    with pytest.raises(SampleError) as caught:
        video.read_counted(list(range(40)))
    rejection = caught.value.rejection
    assert (rejection.file, rejection.index, rejection.field, rejection.reason) == (
        "ann.json",
        5,
        "video",
        "corrupt_video",
    )
    assert f"frames [{lost}] do not decode" in rejection.detail
    # Decoding goes on past the refused packet: the other frames come back, counted as damaged.
    frames, errors = video.read_counted([frame for frame in range(40) if frame != lost])
    assert frames.shape == (39, 128, 160, 3) and errors > 0
    # A read that never reaches the damaged group of pictures is clean.
    assert key > 0 and video.read_counted(list(range(key)))[1] == 0
    lenient = DataConfig(max_frames=40, video={"backend": "pyav"})
    with pytest.raises(SampleError) as caught:
        load_video_clip(str(corrupt / "broken.mp4"), lenient, file="ann.json", index=5)
    assert caught.value.rejection.reason == "corrupt_video"  # lenient or not: a lost frame is lost


def _sleep_holding_the_gil(seconds: int) -> None:
    # ctypes.PyDLL keeps the GIL during the call (ctypes.CDLL would release it): nothing else in
    # this process runs Python until libc's sleep returns, like a decoder spinning in native code.
    ctypes.PyDLL(None).sleep(seconds)


class _StuckDecoder:
    """A stand-in decoder: files named ``hang*`` block in native code holding the GIL; others are PyAV."""

    def __init__(self, path: str, threads: int = 0):
        self._inner = PyAVDecoder(path, threads)
        self.num_frames, self.fps, self.path = self._inner.num_frames, self._inner.fps, path

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, int]:
        if Path(self.path).name.startswith("hang") and list(indices) != [0]:
            _sleep_holding_the_gil(60)
        return self._inner.read(indices)


@pytest.fixture()
def stuck_backend(clip: tuple[Path, Path, np.ndarray], tmp_path: Path) -> Path:
    DECODERS["stuck"] = _StuckDecoder
    hang = tmp_path / "hang.mp4"
    hang.write_bytes(clip[0].read_bytes())
    yield hang
    del DECODERS["stuck"]


def test_the_stand_in_really_holds_the_gil() -> None:
    ticks: list[None] = []

    def tick() -> None:
        for _ in range(200):
            ticks.append(time.sleep(0.01))

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    time.sleep(0.05)
    before = len(ticks)
    _sleep_holding_the_gil(1)
    assert len(ticks) - before <= 1  # the other thread could not run for a whole second


def test_a_hanging_decode_is_skipped_within_its_deadline(clip, stuck_backend: Path) -> None:
    cfg = DataConfig(max_frames=8, video={"backend": "stuck", "timeout_s": 2.0})
    start = time.monotonic()
    with pytest.raises(SampleError) as caught:
        load_video_clip(str(stuck_backend), cfg, file="ann.json", index=5)
    elapsed = time.monotonic() - start
    assert caught.value.rejection.reason == "decode_timeout"
    assert (caught.value.rejection.file, caught.value.rejection.index) == ("ann.json", 5)
    assert 2.0 <= elapsed < 10.0
    # The next sample decodes in a fresh helper and matches an in-process decode.
    good = load_video_clip(str(clip[0]), cfg)
    in_process = load_video_clip(str(clip[0]), DataConfig(max_frames=8, video={"backend": "pyav"}))
    assert np.array_equal(good.frames, in_process.frames)


def test_without_a_deadline_nothing_is_forked(clip) -> None:
    deadline._HELPER = None
    load_video_clip(str(clip[0]), DataConfig(max_frames=8))
    assert deadline._HELPER is None


class _Cycle:
    """A reference cycle: only the garbage collector frees it."""

    def __init__(self, reader: object):
        self.reader, self.me = reader, self


@pytest.mark.skipif(unavailable("decord") is not None, reason="decord is not installed")
def test_the_helper_never_finalises_a_decoder_it_inherited(clip) -> None:
    import decord

    deadline._HELPER = None
    reader = decord.VideoReader(str(clip[0]), num_threads=2)
    reader.get_batch([0, 5])
    _Cycle(reader)
    del reader
    # Freed in the helper, decord's reader would join decoding threads that only this process has:
    # the helper hangs (a good file then times out) or crashes.
    assert call_with_deadline(gc.collect, (), 10.0) >= 0
    gc.collect()


class _Clips(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], cfg: DataConfig):
        self.paths, self.cfg = paths, cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        try:
            return str(load_video_clip(str(self.paths[i]), self.cfg, index=i).frames.shape)
        except SampleError as error:
            return error.rejection.reason


def test_the_dataloader_worker_lives_on_after_a_timeout(clip, stuck_backend: Path) -> None:
    cfg = DataConfig(max_frames=8, video={"backend": "stuck", "timeout_s": 2.0})
    paths = [clip[0], stuck_backend, clip[0], clip[0]]
    loader = torch.utils.data.DataLoader(_Clips(paths, cfg), batch_size=None, num_workers=1)
    start = time.monotonic()
    out = list(loader)
    assert out[1] == "decode_timeout"
    assert out[0] == out[2] == out[3] != "decode_timeout"
    assert time.monotonic() - start < 30.0
