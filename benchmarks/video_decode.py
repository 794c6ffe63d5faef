"""Decoding only the sampled frames vs decoding every frame of a video, with decord.

Writes a synthetic H.264 mp4 (a moving square over a gradient, 1280x720, 300 frames by default),
then times, best of ``--repeats``:

- ``sampled``: open the video and read the frames :func:`sample_frame_indices` picks (32), as the
  data pipeline does;
- ``all``: open the video and decode every frame in order (frames are dropped as they come, so
  memory stays flat), as a pipeline that decodes everything then subsamples would.

The ratio depends on the key-frame interval: decord seeks to the key frame before each sampled
frame and decodes forward from it, so with long GOPs the sampled read still decodes most frames.
Run with ``--gop 0`` (x264's default, 250) and a short GOP such as ``--gop 30`` to see both ends.

    .venv/bin/python benchmarks/video_decode.py [--frames 300] [--gop 0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import decord
import numpy as np

from swim.data.frames import sample_frame_indices
from swim.data.video import open_video, write_video


def synthetic_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """``(F, height, width, 3)`` uint8: a horizontal gradient with a white square moving right."""
    gradient = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    base = np.broadcast_to(gradient, (height, width, 3)).astype(np.uint8)
    frames = np.repeat(base[None], num_frames, axis=0)
    side = height // 4
    for t in range(num_frames):
        x = int((width - side) * t / max(num_frames - 1, 1))
        frames[t, height // 3 : height // 3 + side, x : x + side] = 255
    return frames


def best_time(run: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def decode_sampled(path: str, num_samples: int) -> None:
    source = open_video(path, num_threads=1, backend="decord")
    indices = sample_frame_indices(source.num_frames, [], max_frames=num_samples)
    frames = source.read(indices)
    assert frames.shape[0] == len(indices)


def decode_all(path: str) -> None:
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    for _ in range(len(reader)):
        reader.next()


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--gop", type=int, default=0, help="key-frame interval (0: x264 default)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "bench.mp4")
        write_video(path, synthetic_frames(args.frames, args.height, args.width), fps=30.0, gop=args.gop)
        sampled = best_time(lambda: decode_sampled(path, args.samples), args.repeats)
        everything = best_time(lambda: decode_all(path), args.repeats)

    print(f"video: {args.width}x{args.height}, {args.frames} frames, gop={args.gop or 'x264 default'}")
    print(f"decode {args.samples} sampled frames: {sampled:.3f} s")
    print(f"decode all {args.frames} frames:     {everything:.3f} s")
    print(f"ratio all / sampled: {everything / sampled:.2f}x")


if __name__ == "__main__":
    main()
