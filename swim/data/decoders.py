"""Video decoder backends behind one small interface: PyAV, decord and torchcodec.

``data.video.backend`` names one (``auto`` picks the first that works here: torchcodec when it
imports with a working FFmpeg, else PyAV, whose wheel bundles FFmpeg, else decord). Every backend
returns frames in presentation order, indexed from 0, as ``(F, H, W, 3)`` uint8 RGB; only PyAV also
reports frames whose decode logged an error (FFmpeg conceals damage in a corrupt stream and
returns a frame anyway), the others report 0.

A decoder is opened in the process that reads with it (a dataloader worker, the decode child of
``swim.data.deadline``); :data:`DECODERS` maps a backend name to its opener, and a test may add one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

BACKENDS = ("pyav", "decord", "torchcodec")
AUTO_ORDER = ("torchcodec", "pyav", "decord")


class Decoder(Protocol):
    """An opened video file.

    Attributes:
        num_frames: frames the container reports (a read past the frames that really decode fails).
        fps: the average frame rate, or ``0.0`` when the container has none.
    """

    num_frames: int
    fps: float

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, int]:
        """Decode ``indices`` (any order, repeats allowed).

        Returns:
            ``(F, H, W, 3)`` uint8 RGB frames, ``F = len(indices)``, and the number of frames decoded
            on the way whose decode reported an error (0 when the backend cannot tell).
        """
        ...


Opener = Callable[[str, int], Decoder]
"""Opens ``path`` with ``threads`` decoding threads (0: the library's choice); raises on failure."""


class PyAVDecoder:
    """PyAV (FFmpeg bundled in its wheel): sequential decode from the start up to the last wanted frame.

    Opening demuxes the whole file once to count its frames.

    FFmpeg's error messages during the decode are captured (never printed) and counted per frame.
    """

    def __init__(self, path: str, threads: int = 0):
        import av

        self.path, self.threads = path, threads
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError("the file has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            # Count the packets really in the file (demuxing reads no pixels): a truncated file or a
            # container that over-reports its frames (dmlc/decord #373) fails here, not mid-training.
            packets = sum(1 for packet in container.demux(stream) if packet.size)
            if stream.frames and packets < stream.frames:
                reported = stream.frames
                raise ValueError(f"the container reports {reported} frames, holds {packets} (truncated?)")
            self.num_frames = packets

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, int]:
        import av
        import av.logging

        wanted = set(indices)
        last = max(wanted)
        found: dict[int, np.ndarray] = {}
        error_frames, seen_errors = 0, 0
        av.logging.set_level(av.logging.ERROR)
        with av.logging.Capture(local=False) as logs, av.open(self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.threads
            for position, frame in enumerate(container.decode(stream)):
                errors = sum(1 for level, _, _ in logs if level <= av.logging.ERROR)
                error_frames += errors > seen_errors
                seen_errors = errors
                if position in wanted:
                    found[position] = frame.to_ndarray(format="rgb24")
                if position == last:
                    break
        missing = sorted(wanted - set(found))
        if missing:
            raise ValueError(f"frames {missing} do not decode (the stream ends before them)")
        return np.stack([found[i] for i in indices]), error_frames


class DecordDecoder:
    """decord's ``VideoReader`` (seeks to the key frame before each wanted frame)."""

    def __init__(self, path: str, threads: int = 0):
        import decord

        self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, int]:
        return self._reader.get_batch([int(i) for i in indices]).asnumpy(), 0


class TorchCodecDecoder:
    """torchcodec's ``VideoDecoder`` in exact seek mode (a frame index is a frame, not a timestamp)."""

    def __init__(self, path: str, threads: int = 0):
        from torchcodec.decoders import VideoDecoder

        self._decoder = VideoDecoder(
            path, dimension_order="NHWC", num_ffmpeg_threads=threads, seek_mode="exact"
        )
        metadata = self._decoder.metadata
        self.num_frames = int(metadata.num_frames or len(self._decoder))
        self.fps = float(metadata.average_fps or 0.0)

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, int]:
        batch = self._decoder.get_frames_at(indices=[int(i) for i in indices])
        return batch.data.numpy(), 0


DECODERS: dict[str, Opener] = {
    "pyav": PyAVDecoder,
    "decord": DecordDecoder,
    "torchcodec": TorchCodecDecoder,
}

_MODULES = {"pyav": "av", "decord": "decord", "torchcodec": "torchcodec.decoders"}


@functools.cache
def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot decode here (``None``: it can).

    torchcodec needs FFmpeg's shared libraries on the system: importing it fails without them.
    """
    module = _MODULES.get(backend)
    if module is None:
        return None
    try:
        __import__(module)
    except Exception as error:
        return f"{module} cannot be imported: {type(error).__name__}: {str(error).strip()[:300]}"
    return None


def resolve_backend(name: str) -> str:
    """The backend ``name`` stands for: itself, or for ``auto`` the first of :data:`AUTO_ORDER` that works.

    Raises:
        ValueError: an unknown name, or a backend that cannot decode here (says why).
    """
    if name == "auto":
        for backend in AUTO_ORDER:
            if unavailable(backend) is None:
                return backend
        reasons = "; ".join(f"{b}: {unavailable(b)}" for b in AUTO_ORDER)
        raise ValueError(f"data.video.backend=auto: no video decoder works here ({reasons})")
    if name not in DECODERS:
        raise ValueError(f"data.video.backend={name!r}: expected auto or one of {sorted(DECODERS)}")
    reason = unavailable(name)
    if reason is not None:
        raise ValueError(f"data.video.backend={name}: {reason}")
    return name


def open_decoder(backend: str, path: str, threads: int = 0) -> Decoder:
    """Open ``path`` with the resolved ``backend`` (see :func:`resolve_backend`)."""
    return DECODERS[backend](path, threads)
