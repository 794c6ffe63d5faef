"""A record's visual input as the model sees it: sampled frames, resized to multiples of the token side.

A video's frames are chosen as in METHOD.md section 2 (every annotated frame kept, the rest
uniform, an even count: :func:`~swim.data.frames.sample_frame_indices`) and resized Qwen-style
within the data config's pixel bounds (:func:`~swim.data.frames.fit_resolution`). An image is a
one-frame clip with its own pixel bounds. Training samples (``swim.data.sample``) and evaluation
prompts (``swim.eval``) load media only through here, so both show the model the same frames.
Failures raise :class:`~swim.data.schema.SampleError` naming file, record index and field.

With ``data.video.timeout_s`` set, opening, sampling and decoding a video run in a helper process
with that deadline (``swim.data.deadline``): a decode past it is ``decode_timeout``, a decoder that
crashes the helper ``decode_crashed``. Frames whose decode reported errors (FFmpeg conceals a
corrupt stream's damage) are counted in :attr:`VideoClip.error_frames`; with ``data.strict`` the
clip is refused instead (``corrupt_frames``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from transformers.video_utils import VideoMetadata

from swim.data.config import DataConfig
from swim.data.deadline import DeadlineExceeded, HelperDied, call_with_deadline, rejection_for
from swim.data.frames import SPATIAL_FACTOR, fit_resolution, sample_frame_indices
from swim.data.masks import annotated_frames
from swim.data.schema import Rejection, SampleError
from swim.data.video import VideoSource, open_video, resize_frames

log = logging.getLogger(__name__)

Timer = Callable[[str], AbstractContextManager[Any]]
"""Times a stage by name (``swim.data.sample.Stopwatch``): ``with timer("decode_video"): ...``."""


def _untimed(stage: str) -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


@dataclass
class VideoClip:
    """Frames as the model sees them: ``F`` sampled frames of the source, resized to ``H x W``.

    Attributes:
        frames: ``(F, H, W, 3)`` uint8, ``H`` and ``W`` multiples of the resize factor (28); ``F``
            is even for a video and 1 for an image.
        frame_indices: the ``F`` sampled frames' indices in the source (``[0]`` for an image).
        video_hw: the source's ``(height, width)`` before resizing.
        num_frames: frames in the source (1 for an image).
        fps: the source's frame rate (``data.default_fps`` for frame folders and images).
        error_frames: frames decoded for this clip whose decode reported an error (0: clean, or
            a backend that cannot tell).
    """

    frames: np.ndarray
    frame_indices: list[int]
    video_hw: tuple[int, int]
    num_frames: int
    fps: float
    error_frames: int = 0

    @property
    def resized_hw(self) -> tuple[int, int]:
        """``(H, W)``, the size of :attr:`frames`."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def metadata(self) -> VideoMetadata:
        """The processor's video metadata (its sampled fps sets ``second_per_grid_ts``)."""
        return VideoMetadata(
            total_num_frames=self.num_frames, fps=self.fps, frames_indices=list(self.frame_indices)
        )


def load_video_clip(
    path: str,
    cfg: DataConfig,
    *,
    annotation: Sequence[Mapping[Any, Any]] = (),
    file: str = "?",
    index: int = -1,
    factor: int = SPATIAL_FACTOR,
    timer: Timer = _untimed,
) -> VideoClip:
    """Open ``path`` (an mp4 or a frame folder), sample its frames and resize them.

    Args:
        path: the video file or frame folder.
        cfg: ``max_frames``, the pixel bounds ``min_pixels``/``max_pixels``/``total_pixels``,
            ``default_fps``, ``video_threads``, ``video`` (backend, deadline) and ``strict``.
        annotation: the record's instances (frame -> segmentation); their frames are always sampled.
        file, index: the record's annotation file and index, for errors.
        factor: the side multiple of the resized frames (the processor's patch size x merge size).
        timer: times opening, sampling and decoding as ``decode_video`` and resizing as ``resize_frames``.

    Returns:
        The clip: ``F <= max_frames`` even, ``(H, W)`` from :func:`~swim.data.frames.fit_resolution`.

    Raises:
        SampleError: the video cannot be read (field ``video``; also ``decode_timeout``,
            ``decode_crashed``, and ``corrupt_frames`` in strict mode), or an annotated frame key is
            bad or lies outside the video (field ``annotation[j]``).
    """
    with timer("decode_video"):
        # Only the frame keys choose frames: the segmentations stay here (the helper gets less to unpickle).
        keys = [dict.fromkeys(instance) for instance in annotation]
        args = (path, cfg, keys, file, index)
        if cfg.video.timeout_s is None:
            video, indices, frames, errors = _decode_sampled(*args)
        else:
            try:
                decoded = call_with_deadline(_decode_sampled, args, cfg.video.timeout_s)
            except (DeadlineExceeded, HelperDied) as error:
                raise SampleError(rejection_for(error, file, index, path)) from None
            video, indices, frames, errors = decoded
    if errors:
        detail = f"{path}: {errors} decoded frames reported decode errors (concealed corruption)"
        if cfg.strict:
            raise SampleError(Rejection(file, index, "video", "corrupt_frames", detail))
        log.warning("%s: record %d: %s", file, index, detail)
    height, width = fit_resolution(
        video.height,
        video.width,
        len(indices),
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
        total_pixels=cfg.total_pixels,
        factor=factor,
    )
    with timer("resize_frames"):
        frames = resize_frames(frames, height, width)
    return VideoClip(frames, indices, (video.height, video.width), video.num_frames, video.fps, errors)


def _decode_sampled(
    path: str, cfg: DataConfig, annotation: list[Mapping[Any, Any]], file: str, index: int
) -> tuple[VideoSource, list[int], np.ndarray, int]:
    """Open ``path``, choose its frames and decode them (in this process or the deadline helper).

    Returns:
        The source, the sampled indices, their ``(F, H, W, 3)`` uint8 frames at the source size and
        the number of frames whose decode reported errors.
    """
    video = open_video(
        path,
        file=file,
        index=index,
        field="video",
        default_fps=cfg.default_fps,
        num_threads=cfg.video_threads,
        backend=cfg.video.backend,
    )
    annotated: set[int] = set()
    for j, instance in enumerate(annotation):
        where = {"file": file, "index": index, "field": f"annotation[{j}]"}
        annotated.update(annotated_frames(instance, num_frames=video.num_frames, **where))
    indices = sample_frame_indices(video.num_frames, annotated, cfg.max_frames)
    frames, errors = video.read_counted(indices)
    return video, indices, frames, errors


def load_image(
    path: str,
    cfg: DataConfig,
    *,
    file: str = "?",
    index: int = -1,
    factor: int = SPATIAL_FACTOR,
    timer: Timer = _untimed,
) -> VideoClip:
    """Read the image ``path`` as a one-frame clip resized within ``image_min_pixels``/``image_max_pixels``.

    Args:
        file, index: the record's annotation file and index, for errors (field ``image``).
        factor, timer: as for :func:`load_video_clip` (reading is ``decode_video``).

    Returns:
        The clip: ``frames`` ``(1, H, W, 3)``, ``frame_indices`` ``[0]``, ``fps`` ``data.default_fps``.

    Raises:
        SampleError: ``missing_image`` or ``corrupt_image``.
    """
    where = (file, index, "image")
    with timer("decode_video"):
        try:
            with Image.open(path) as image:
                pixels = np.array(image.convert("RGB"))
        except FileNotFoundError as err:
            raise SampleError(Rejection(*where, "missing_image", f"{path}: {err}")) from err
        except Exception as err:
            raise SampleError(Rejection(*where, "corrupt_image", f"{path}: cannot be read: {err}")) from err
    image_hw = (int(pixels.shape[0]), int(pixels.shape[1]))
    height, width = fit_resolution(
        *image_hw,
        1,
        min_pixels=cfg.image_min_pixels,
        max_pixels=cfg.image_max_pixels,
        total_pixels=cfg.image_max_pixels,
        factor=factor,
    )
    with timer("resize_frames"):
        frames = resize_frames(pixels[None], height, width)
    return VideoClip(frames, [0], image_hw, 1, cfg.default_fps)
