"""Opening videos (an mp4 file or a folder of frame images) and reading chosen frames.

:func:`open_video` checks the source and reads its metadata; :meth:`VideoSource.read` decodes only
the frames asked for, with the backend :class:`VideoConfig` names (``swim.data.decoders``). Every
failure raises :class:`~swim.data.schema.SampleError` with a stable reason code; an unreadable
video never turns into black frames.

Reasons: ``missing_video`` (no such path), ``empty_file`` (zero bytes), ``not_a_video`` (an image
file given as a video), ``corrupt_video`` (the decoder cannot open it, or a frame fails to decode),
``empty_frame_folder`` (a folder with no jpg/jpeg/png), ``frame_out_of_range`` (a read past the end).
``swim.data.media`` adds ``decode_timeout``, ``decode_crashed`` and ``corrupt_frames``.

A :class:`VideoSource` pickles without its decoder: each process (a dataloader worker, say) opens
its own on first use.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from swim.data.decoders import BACKENDS, DECODERS, Decoder, open_decoder, resolve_backend
from swim.data.schema import Rejection, SampleError

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Leading bytes of image formats that are sometimes passed where a video is expected.
_IMAGE_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WebP"),
)

_DIGITS = re.compile(r"(\d+)")

_Fail = Callable[[str, str], SampleError]
"""Builds the error for a reason code and a detail."""


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``frame2.jpg`` before ``frame10.jpg``."""
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(name)]


@dataclasses.dataclass
class VideoConfig:
    """How videos are decoded (``data.video`` in ``conf/data/*.yaml``).

    Attributes:
        backend: ``auto`` (torchcodec if it works here, else PyAV, else decord), ``pyav``,
            ``decord`` or ``torchcodec``; frame folders are always read with PIL.
        timeout_s: deadline of one sample's decode (open, sample, read). With a value, decoding runs
            in a helper process that is killed past the deadline, so even a decoder spinning in
            native code with the GIL held cannot stall a worker (``swim.data.deadline``); the sample
            is then skipped as ``decode_timeout``. ``None``: decode in-process, no deadline.
    """

    backend: str = "auto"
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.backend != "auto" and self.backend not in DECODERS:
            raise ValueError(f"data.video.backend={self.backend!r}: expected auto or one of {BACKENDS}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"data.video.timeout_s={self.timeout_s}: expected a positive number or null")


@dataclasses.dataclass
class VideoSource:
    """An opened video: a video file read with a decoder backend, or a folder of frame images (PIL).

    Attributes:
        path: the file or folder.
        num_frames: frames in the video.
        fps: frames per second (the container's average, or the default for frame folders).
        height, width: frame size in pixels.
        frame_files: the folder's frame files in natural order, or ``None`` for a video file.
        file, index, field: where the video was named, for error messages.
        num_threads: decoding threads (0: the backend's choice).
        backend: the decoder backend of a video file (a resolved name, never ``auto``).
    """

    path: str
    num_frames: int
    fps: float
    height: int
    width: int
    frame_files: tuple[str, ...] | None = None
    file: str = "?"
    index: int = -1
    field: str = "video"
    num_threads: int = 0
    backend: str = "pyav"
    _reader: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _reader_pid: int = dataclasses.field(default=-1, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None
        state["_reader_pid"] = -1
        return state

    def _fail(self, reason: str, detail: str) -> SampleError:
        return SampleError(Rejection(self.file, self.index, self.field, reason, f"{self.path}: {detail}"))

    def _decoder(self) -> Decoder:
        """This process's decoder, opened on first use (a decoder is never shared across forks)."""
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = _open_file(self.path, self.backend, self.num_threads, self._fail)
            self._reader_pid = os.getpid()
        return self._reader

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Decode the frames ``indices``: :meth:`read_counted` without the error count."""
        return self.read_counted(indices)[0]

    def read_counted(self, indices: Sequence[int]) -> tuple[np.ndarray, int]:
        """Decode the frames ``indices`` (any order, repeats allowed) at the original resolution.

        Returns:
            ``(F, H, W, 3)`` uint8 RGB, ``F = len(indices)``, ``H, W = self.height, self.width``, and
            the number of frames whose decode reported an error (concealed corruption; only the
            PyAV backend can tell, frame folders never have any).

        Raises:
            SampleError: ``frame_out_of_range`` for an index outside ``[0, num_frames)``,
                ``corrupt_video`` when a frame fails to decode or has another size.
            ValueError: ``indices`` is empty.
        """
        if len(indices) == 0:
            raise ValueError(f"{self.path}: no frame indices to read")
        outside = [i for i in indices if not 0 <= i < self.num_frames]
        if outside:
            raise self._fail("frame_out_of_range", f"frames {outside} outside its {self.num_frames} frames")
        if self.frame_files is None:
            frames, errors = self._read_file(indices)
        else:
            frames, errors = self._read_folder(self.frame_files, indices), 0
        expected = (len(indices), self.height, self.width, 3)
        if frames.shape != expected or frames.dtype != np.uint8:
            raise self._fail(
                "corrupt_video", f"decoded {frames.shape} {frames.dtype}, expected {expected} uint8"
            )
        return frames, errors

    def _read_file(self, indices: Sequence[int]) -> tuple[np.ndarray, int]:
        decoder = self._decoder()
        try:
            return decoder.read(indices)
        except Exception as error:
            detail = f"frames {list(indices)} failed to decode ({self.backend}): {error}"
            raise self._fail("corrupt_video", detail) from error

    def _read_folder(self, files: tuple[str, ...], indices: Sequence[int]) -> np.ndarray:
        frames = []
        for i in indices:
            name = files[i]
            try:
                with Image.open(os.path.join(self.path, name)) as image:
                    frame = np.asarray(image.convert("RGB"))
            except Exception as error:
                raise self._fail("corrupt_video", f"frame {i} ({name}) failed to decode: {error}") from error
            if frame.shape[:2] != (self.height, self.width):
                raise self._fail(
                    "corrupt_video",
                    f"frame {i} ({name}) is {frame.shape[0]}x{frame.shape[1]}, "
                    f"expected {self.height}x{self.width} like the first frame",
                )
            frames.append(frame)
        return np.stack(frames)


def _open_file(path: str, backend: str, num_threads: int, fail: _Fail) -> Decoder:
    try:
        return open_decoder(backend, path, num_threads)
    except Exception as error:
        detail = f"the decoder ({backend}) cannot open it: {str(error).strip()[-300:]}"
        raise fail("corrupt_video", detail) from error


def _looks_like_image(path: str) -> str | None:
    with open(path, "rb") as handle:
        head = handle.read(16)
    for offset, magic, kind in _IMAGE_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return kind
    return None


def open_video(
    path: str,
    *,
    file: str = "?",
    index: int = -1,
    field: str = "video",
    default_fps: float = 4.0,
    num_threads: int = 0,
    backend: str = "auto",
) -> VideoSource:
    """Open a video file or a folder of frames and read its metadata (no frame is kept).

    Frame folders: files ending in ``.jpg``, ``.jpeg`` or ``.png`` (any case, hidden files skipped)
    in natural order; other files are ignored; the size is the first frame's; ``fps`` is
    ``default_fps``. Video files: the decoder reads the frame count, average fps (``default_fps``
    when the container has none) and size; frame 0 is decoded to check the stream really decodes.

    Args:
        path: an mp4 (or any container FFmpeg reads) or a folder of frame images.
        file, index, field: the record's annotation file, index and field, for errors.
        default_fps: fps of frame folders and of videos without a usable rate.
        num_threads: decoding threads (0: the backend's choice).
        backend: the decoder backend (:class:`VideoConfig`), ``auto`` resolved here.

    Raises:
        SampleError: reasons ``missing_video``, ``empty_file``, ``not_a_video``, ``corrupt_video``,
            ``empty_frame_folder``.
        ValueError: an unknown backend, or one that cannot decode here.
    """

    def fail(reason: str, detail: str) -> SampleError:
        return SampleError(Rejection(file, index, field, reason, f"{path}: {detail}"))

    if os.path.isdir(path):
        return _open_folder(path, fail, file=file, index=index, field=field, fps=default_fps)
    if not os.path.exists(path):
        raise fail("missing_video", "no such file or folder")
    if os.path.getsize(path) == 0:
        raise fail("empty_file", "the file has zero bytes")
    image_kind = _looks_like_image(path)
    if image_kind is not None:
        raise fail("not_a_video", f"this is an image file ({image_kind}), expected a video or a frame folder")

    backend = resolve_backend(backend)
    reader = _open_file(path, backend, num_threads, fail)
    num_frames = reader.num_frames
    if num_frames < 1:
        raise fail("corrupt_video", "the video has no frames")
    try:
        first = reader.read([0])[0][0]
    except Exception as error:
        raise fail("corrupt_video", f"frame 0 failed to decode ({backend}): {error}") from error
    fps = reader.fps
    if not np.isfinite(fps) or fps <= 0:
        fps = default_fps
    source = VideoSource(
        path=path,
        num_frames=num_frames,
        fps=fps,
        height=int(first.shape[0]),
        width=int(first.shape[1]),
        file=file,
        index=index,
        field=field,
        num_threads=num_threads,
        backend=backend,
    )
    source._reader, source._reader_pid = reader, os.getpid()
    return source


def _open_folder(path: str, fail: _Fail, *, file: str, index: int, field: str, fps: float) -> VideoSource:
    names = sorted(
        (
            name
            for name in os.listdir(path)
            if name.lower().endswith(FRAME_EXTENSIONS)
            and not name.startswith(".")
            and os.path.isfile(os.path.join(path, name))
        ),
        key=natural_key,
    )
    if not names:
        raise fail("empty_frame_folder", f"no {'/'.join(FRAME_EXTENSIONS)} frames in the folder")
    first = os.path.join(path, names[0])
    try:
        with Image.open(first) as image:
            width, height = image.size
    except Exception as error:
        raise fail("corrupt_video", f"first frame {names[0]} cannot be read: {error}") from error
    return VideoSource(
        path=path,
        num_frames=len(names),
        fps=fps,
        height=height,
        width=width,
        frame_files=tuple(names),
        file=file,
        index=index,
        field=field,
    )


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize frames with antialiased bicubic interpolation (what qwen-vl-utils does for videos).

    Args:
        frames: ``(F, H, W, 3)`` uint8.
        height, width: the target size.

    Returns:
        ``(F, height, width, 3)`` uint8 (the input itself when the size already matches).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    if frames.shape[1:3] == (height, width):
        return frames
    # torch resizes uint8 channels-last tensors natively (no float copy): ~15x faster on 720p frames.
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    resized = F.interpolate(tensor, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return resized.permute(0, 2, 3, 1).contiguous().numpy()


def write_video(
    path: str, frames: np.ndarray, fps: float = 4.0, *, faststart: bool = False, gop: int = 0
) -> None:
    """Encode frames to an H.264 (libx264, yuv420p) mp4 with PyAV; for demos, tests and benchmarks.

    The bytes depend only on the arguments (one encoder thread), not on the machine's core count.

    Args:
        path: the output file.
        frames: ``(F, H, W, 3)`` uint8 RGB, ``H`` and ``W`` even (yuv420p).
        fps: frame rate.
        faststart: put the index (moov atom) before the data instead of after it.
        gop: frames between key frames (0: the encoder's default).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(path, "w", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        # One encoder thread: x264's output depends on its thread count, so the same frames give
        # the same bytes on every machine.
        stream.codec_context.thread_count = 1
        if gop:
            stream.codec_context.gop_size = gop
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())
