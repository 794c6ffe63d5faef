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

import bisect
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

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
    """PyAV (FFmpeg bundled in its wheel), seeking to the key frame before each run of wanted frames.

    Opening demuxes the whole file once (no pixels are decoded) to count its frames and learn their
    timestamps and key frames; a frame's index is its rank in presentation order. A file whose
    packets have no timestamps is decoded sequentially from the start instead. FFmpeg's error
    messages during a read are captured (never printed) and counted per decoded frame. A packet
    FFmpeg refuses outright (``InvalidDataError``: a broken NAL length, say) counts as an error
    frame and decoding goes on with the next packet, as the ``ffmpeg`` tool does; a wanted frame
    that never decodes fails the read. Decoding runs on one thread (see :meth:`read`), whatever
    ``threads`` says.
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
            # Count the packets really in the file: a truncated file or a container that over-reports
            # its frames (dmlc/decord #373) fails here, not mid-training.
            packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
            if stream.frames and len(packets) < stream.frames:
                reported = stream.frames
                raise ValueError(
                    f"the container reports {reported} frames, holds {len(packets)} (truncated?)"
                )
        self.num_frames = len(packets)
        timed = all(pts is not None for pts, _ in packets)
        self._pts = sorted(pts for pts, _ in packets) if timed else []
        self._index = {pts: i for i, pts in enumerate(self._pts)}
        keys = sorted(self._index[pts] for pts, key in packets if key) if timed else []
        self._keys = keys if keys and keys[0] == 0 else [0, *keys]

    def _key_before(self, index: int) -> int:
        """The index of the last key frame at or before frame ``index``."""
        return self._keys[bisect.bisect_right(self._keys, index) - 1]

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, int]:
        import av
        import av.logging

        wanted = sorted(set(indices))
        found: dict[int, np.ndarray] = {}
        error_frames, seen_errors = 0, 0
        av.logging.set_level(av.logging.ERROR)
        with av.logging.Capture(local=False) as logs, av.open(self.path) as container:
            stream = container.streams.video[0]
            # One decoding thread: FFmpeg's worker threads report errors through PyAV's log
            # callback, which needs the GIL, while freeing a threaded codec context waits for them
            # with the GIL held (a deadlock seen in the test suite). Dataloader workers give the
            # parallelism instead; ``threads`` applies to decord and torchcodec.
            stream.codec_context.thread_count = 1
            next_wanted, last_start = 0, -1
            while next_wanted < len(wanted):
                start = self._key_before(wanted[next_wanted]) if self._pts else 0
                if start == last_start:
                    break  # a seek that brought no wanted frame: those frames do not decode
                last_start = start
                if self._pts:
                    container.seek(self._pts[start], stream=stream, backward=True, any_frame=False)
                refused = [0]
                decoded = _decode_packets(container, stream, refused, timed=bool(self._pts))
                for position, frame in enumerate(decoded, start=start):
                    errors = sum(1 for level, _, _ in logs if level <= av.logging.ERROR)
                    error_frames += (errors > seen_errors) + refused[0]
                    seen_errors, refused[0] = errors, 0
                    index = self._index.get(frame.pts, -1) if self._pts else position
                    if index < start:
                        continue
                    if index in wanted[next_wanted:]:
                        found[index] = frame.to_ndarray(format="rgb24")
                    while next_wanted < len(wanted) and wanted[next_wanted] <= index:
                        next_wanted += 1
                    if next_wanted == len(wanted) or (
                        self._pts and self._key_before(wanted[next_wanted]) > index + 1
                    ):
                        break  # done, or a key frame lies between here and the next wanted frame
                else:
                    error_frames += refused[0]
                    break  # the stream ended
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise ValueError(
                f"frames {missing} do not decode (the stream ends before them, or they are damaged)"
            )
        return np.stack([found[i] for i in indices]), error_frames


def _decode_packets(container: Any, stream: Any, refused: list[int], *, timed: bool) -> Iterator[Any]:
    """Yield the frames of ``stream`` from the container's position, packet by packet.

    A packet whose decode raises ``InvalidDataError`` adds 1 to ``refused[0]`` and is skipped. In
    a stream without timestamps a frame's index is its position, which a skipped packet would
    shift, so there the error is raised instead.
    """
    import av

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            if not timed:
                raise
            refused[0] += 1
            continue
        yield from frames


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
