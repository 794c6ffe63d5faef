"""One record -> one sample's tensors: frames, chat tokens, labels, supervised rows and masks.

:class:`SampleBuilder` reads the record's video (sampled frames, resized to multiples of 28 px) or
image, renders and tokenises the conversation, aligns the ``<ins>`` tags to tokens, decodes the
masks of the instances that tagged rows refer to (only on sampled annotated frames), and runs the
processor for pixel values. Every failure caused by the data raises :class:`SampleError` naming
file, record index and field; the dataset counts and skips those in training.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from transformers.video_utils import VideoMetadata

from swim.data.chat import Rows, Visual, align, assign_instances, render_chat, tagged_phrases, tokenize_chat
from swim.data.frames import (
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    VIDEO_TOTAL_PIXELS,
    fit_resolution,
    sample_frame_indices,
)
from swim.data.masks import annotated_frames, decode_frame_masks, instance_cell_masks, resize_mask_nearest
from swim.data.schema import Record, Rejection, SampleError
from swim.data.video import open_video, resize_frames

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
STAGES = (
    "read_record",
    "decode_video",
    "resize_frames",
    "render_tokenise",
    "align_tags",
    "decode_masks",
    "processor",
)


@dataclass
class DataConfig:
    """Sample-building knobs (top-level keys of ``conf/data/*.yaml``).

    Attributes:
        max_frames: frames sampled per video (annotated frames always kept; made even).
        min_pixels: per-frame pixel floor of videos (Qwen2.5-VL: 128 tokens of 28x28 px).
        max_pixels: per-frame pixel cap of videos (Qwen2.5-VL: 768 tokens).
        total_pixels: pixel budget of a whole video, shared by its frames (qwen-vl-utils' default).
        image_min_pixels, image_max_pixels: pixel bounds of single images (qwen-vl-utils' floor of
            4 tokens; the cap is the video per-frame cap rather than qwen-vl-utils' 16384 tokens).
        system_prompt: the system turn of every conversation; ``None`` leaves it to the template.
        query: supervised row of a tagged token at position p: ``predicting`` (p - 1, the query that
            predicts the token, the reference's behaviour) or ``token`` (p).
        pixel_masks: also carry ``(T, H, W)`` pixel masks (needed by the ``pred_to_mask`` loss).
        strict: raise on the first bad sample instead of counting and skipping it.
        max_length: longest sequence in tokens (visual tokens included); longer samples are rejected
            (``too_long``), never truncated.
        default_fps: frame rate assumed for frame folders and videos without one.
        video_threads: decord decoding threads per video (0: decord's choice).
    """

    max_frames: int = 32
    min_pixels: int = VIDEO_MIN_PIXELS
    max_pixels: int = VIDEO_MAX_PIXELS
    total_pixels: int = VIDEO_TOTAL_PIXELS
    image_min_pixels: int = 4 * 28 * 28
    image_max_pixels: int = VIDEO_MAX_PIXELS
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    query: str = "predicting"
    pixel_masks: bool = True
    strict: bool = False
    max_length: int = 16384
    default_fps: float = 4.0
    video_threads: int = 0

    def __post_init__(self) -> None:
        if self.query not in ("predicting", "token"):
            raise ValueError(f"data.query={self.query!r}: expected 'predicting' or 'token'")
        if self.max_frames < 2:
            raise ValueError(
                f"data.max_frames={self.max_frames}: expected >= 2 (two frames per temporal cell)"
            )
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"data.min_pixels={self.min_pixels}, max_pixels={self.max_pixels}: expected 0 < min <= max"
            )
        if not 0 < self.image_min_pixels <= self.image_max_pixels:
            raise ValueError(
                f"data.image_min_pixels={self.image_min_pixels}, image_max_pixels={self.image_max_pixels}: "
                "expected 0 < min <= max"
            )
        if self.max_length < 1:
            raise ValueError(f"data.max_length={self.max_length}: expected >= 1")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DataConfig:
        """The knobs present in ``values`` (other keys, e.g. ``train`` or ``batch_size``, are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass
class Sample:
    """One sample's tensors (``L`` tokens, ``R`` supervised rows, ``N`` instances with masks).

    Attributes:
        id: the record's id.
        input_ids, attention_mask, labels, mm_token_type_ids: ``(L,)`` long.
        pixel_values_videos: ``(P, 1176)`` float patches, ``video_grid_thw`` ``(1, 3)`` long,
            ``second_per_grid_ts`` ``(1,)`` float; all ``None`` without video.
        pixel_values: ``(P, 1176)`` float image patches, ``image_grid_thw`` ``(1, 3)``; ``None`` without.
        rows: supervised rows; ``rows.instance`` indexes ``cell_masks``, ``rows.phrase`` ``phrases``.
        visual_start: position of the first video token, -1 without video.
        grid: the video's token grid ``(T, h, w)``; ``(0, 0, 0)`` without video.
        cell_masks: ``N`` tensors ``(T, h, w)`` float; ``cell_valid``: ``N`` tensors ``(T,)`` bool.
        pixel_masks: ``N`` tensors ``(T, H, W)`` float, or ``None`` when not asked for.
        phrases: the tagged phrase of each phrase index.
        counters: events while building it (``tag_dropped/<reason>``, ``tags/kept``, ``skip/<reason>``).
    """

    id: str
    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    mm_token_type_ids: Tensor
    rows: Rows
    visual_start: int = -1
    grid: tuple[int, int, int] = (0, 0, 0)
    pixel_values_videos: Tensor | None = None
    video_grid_thw: Tensor | None = None
    second_per_grid_ts: Tensor | None = None
    pixel_values: Tensor | None = None
    image_grid_thw: Tensor | None = None
    cell_masks: list[Tensor] = field(default_factory=list)
    cell_valid: list[Tensor] = field(default_factory=list)
    pixel_masks: list[Tensor] | None = None
    phrases: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.numel())


@dataclass
class VisualSample:
    """What a sample shows, for the data doctor's renders (``F`` sampled frames of ``H x W``).

    Attributes:
        id: the record's id.
        kind: ``video``, ``image`` or ``None`` (text only).
        frames: ``(F, H, W, 3)`` uint8 after resizing (an image is ``F = 1``), or ``None``.
        frame_indices: the sampled frames' indices in the video.
        masks: per instance, ``(F, H, W)`` bool masks at the resized size (False where unannotated).
        annotated: per instance, ``(F,)`` bool, whether the sampled frame has a mask.
        phrases: every tagged phrase in order of appearance.
        phrase_instance: the instance each phrase refers to, ``None`` where none (METHOD.md 1).
    """

    id: str
    kind: Visual | None
    frames: np.ndarray | None
    frame_indices: list[int]
    masks: list[np.ndarray]
    annotated: list[np.ndarray]
    phrases: list[str]
    phrase_instance: list[int | None]


@dataclass
class _Media:
    """Decoded visual input of one record."""

    kind: Visual
    frames: np.ndarray  # (F, H, W, 3) uint8, resized; an image is (1, H, W, 3)
    frame_indices: list[int]
    source_hw: tuple[int, int]
    num_frames: int
    fps: float

    @property
    def resized_hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


_OFF = contextlib.nullcontext()


class Stopwatch:
    """Per-stage wall-clock totals; ``sw(stage)`` is a no-op context when disabled."""

    def __init__(self, enabled: bool = False):
        self.enabled = enabled
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def __call__(self, stage: str) -> contextlib.AbstractContextManager[Any]:
        return self._time(stage) if self.enabled else _OFF

    @contextlib.contextmanager
    def _time(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start
            self.calls[stage] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


class SampleBuilder:
    """Builds :class:`Sample` objects from records with a Qwen2.5-VL processor.

    Args:
        processor: a ``Qwen2_5_VLProcessor`` whose image/video processors do not resize
            (``do_resize=False``): frames arrive at multiples of 28 px.
        cfg: the sample-building knobs.
    """

    def __init__(self, processor: Any, cfg: DataConfig | None = None):
        self.processor = processor
        self.cfg = cfg or DataConfig()
        self.tokenizer = processor.tokenizer
        vp = processor.video_processor
        self.factor = int(vp.patch_size * vp.merge_size)
        self.temporal_patch = int(vp.temporal_patch_size)
        self.stopwatch = Stopwatch()

    def build(self, record: Record) -> Sample:
        """The sample of ``record``.

        Raises:
            SampleError: unreadable media, bad masks or tags, or a sequence over ``max_length``.
        """
        sw, cfg = self.stopwatch, self.cfg
        media = self._media(record)
        kind = media.kind if media is not None else None
        with sw("render_tokenise"):
            chat = render_chat(
                record.turns,
                processor=self.processor,
                system_prompt=cfg.system_prompt,
                visual=kind,
                file=record.file,
                index=record.index,
            )
            ids, offsets, pad_index = tokenize_chat(chat, self.tokenizer)
        grid = self._grid(media)
        num_visual = grid[0] * grid[1] * grid[2]
        length = len(ids) + (num_visual - 1 if media is not None else 0)
        if length > cfg.max_length:
            detail = f"{length} tokens ({num_visual} visual) exceed data.max_length={cfg.max_length}"
            raise SampleError(
                Rejection(record.file, record.index, record_media_field(record), "too_long", detail)
            )
        with sw("align_tags"):
            num_instances = len(record.annotation) if kind == "video" else 0
            alignment = align(
                chat,
                ids,
                offsets,
                pad_index,
                num_visual,
                num_instances=num_instances,
                supervise=record.supervise,
                query=cfg.query,  # type: ignore[arg-type]
            )
        counters = Counter(alignment.counters)
        with sw("decode_masks"):
            rows, phrases, masks = self._masks(record, media, alignment.rows, alignment.phrases, counters)
        with sw("processor"):
            out = self._process(chat.text, media)
        expected = _expanded_ids(ids, pad_index, num_visual)
        if not torch.equal(out["input_ids"][0], expected):
            raise RuntimeError(
                f"{record.file}: record {record.index}: the processor's input_ids differ from the aligned "
                "tokenisation (chat template or tokenizer mismatch)"
            )
        sample = Sample(
            id=record.id,
            input_ids=expected,
            attention_mask=out["attention_mask"][0],
            labels=alignment.labels,
            mm_token_type_ids=out["mm_token_type_ids"][0],
            rows=rows,
            phrases=phrases,
            counters={key: value for key, value in counters.items() if value},
        )
        if kind == "video":
            thw = out["video_grid_thw"]
            if (int(thw[0, 0]), int(thw[0, 1]) // 2, int(thw[0, 2]) // 2) != grid:
                raise RuntimeError(f"processor video grid {thw.tolist()} disagrees with the expected {grid}")
            sample.pixel_values_videos = out["pixel_values_videos"]
            sample.video_grid_thw = thw
            sample.second_per_grid_ts = torch.as_tensor(
                out["second_per_grid_ts"], dtype=torch.float32
            ).reshape(1)
            sample.visual_start = int(pad_index)  # type: ignore[arg-type]
            sample.grid = grid
            sample.cell_masks = [m.cell_masks for m in masks]
            sample.cell_valid = [m.cell_valid for m in masks]
        elif kind == "image":
            sample.pixel_values = out["pixel_values"]
            sample.image_grid_thw = out["image_grid_thw"]
        if cfg.pixel_masks:
            sample.pixel_masks = [m.pixel_masks for m in masks]
        return sample

    def load_visual(self, record: Record) -> VisualSample:
        """The sampled frames, the instances' masks on them and the tag phrases (no tokenisation)."""
        media = self._media(record)
        phrases = tagged_phrases(record.turns, file=record.file, index=record.index)
        base = VisualSample(record.id, None, None, [], [], [], phrases, [None] * len(phrases))
        if media is None:
            return base
        base.kind, base.frames, base.frame_indices = media.kind, media.frames, media.frame_indices
        if media.kind != "video":
            return base
        height, width = media.resized_hw
        for j, instance in enumerate(record.annotation):
            decoded = decode_frame_masks(
                instance,
                media.frame_indices,
                media.source_hw,
                num_frames=media.num_frames,
                file=record.file,
                index=record.index,
                field=f"annotation[{j}]",
            )
            masks = np.zeros((len(media.frame_indices), height, width), dtype=bool)
            annotated = np.zeros(len(media.frame_indices), dtype=bool)
            for k, frame in enumerate(media.frame_indices):
                if frame in decoded:
                    masks[k] = resize_mask_nearest(decoded[frame], height, width)
                    annotated[k] = True
            base.masks.append(masks)
            base.annotated.append(annotated)
        base.phrase_instance = assign_instances(phrases, len(record.annotation))
        return base

    def _media(self, record: Record) -> _Media | None:
        if record.video is not None:
            return self._video(record)
        if record.image is not None:
            return self._image(record)
        return None

    def _video(self, record: Record) -> _Media:
        cfg = self.cfg
        with self.stopwatch("decode_video"):
            video = open_video(
                record.video,  # type: ignore[arg-type]
                file=record.file,
                index=record.index,
                field="video",
                default_fps=cfg.default_fps,
                num_threads=cfg.video_threads,
            )
            annotated: set[int] = set()
            for j, instance in enumerate(record.annotation):
                where = {"file": record.file, "index": record.index, "field": f"annotation[{j}]"}
                annotated.update(annotated_frames(instance, num_frames=video.num_frames, **where))
            indices = sample_frame_indices(video.num_frames, annotated, cfg.max_frames)
            frames = video.read(indices)
        height, width = fit_resolution(
            video.height,
            video.width,
            len(indices),
            min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
            total_pixels=cfg.total_pixels,
            factor=self.factor,
        )
        with self.stopwatch("resize_frames"):
            frames = resize_frames(frames, height, width)
        return _Media("video", frames, indices, (video.height, video.width), video.num_frames, video.fps)

    def _image(self, record: Record) -> _Media:
        cfg = self.cfg
        path = record.image
        where = (record.file, record.index, "image")
        with self.stopwatch("decode_video"):
            try:
                with Image.open(path) as image:  # type: ignore[arg-type]
                    pixels = np.array(image.convert("RGB"))
            except FileNotFoundError as err:
                raise SampleError(Rejection(*where, "missing_image", f"{path}: {err}")) from err
            except Exception as err:
                raise SampleError(
                    Rejection(*where, "corrupt_image", f"{path}: cannot be read: {err}")
                ) from err
        source_hw = (int(pixels.shape[0]), int(pixels.shape[1]))
        height, width = fit_resolution(
            *source_hw,
            1,
            min_pixels=cfg.image_min_pixels,
            max_pixels=cfg.image_max_pixels,
            total_pixels=cfg.image_max_pixels,
            factor=self.factor,
        )
        with self.stopwatch("resize_frames"):
            frames = resize_frames(pixels[None], height, width)
        return _Media("image", frames, [0], source_hw, 1, cfg.default_fps)

    def _grid(self, media: _Media | None) -> tuple[int, int, int]:
        """Token grid ``(T, h, w)`` the media will have after the processor; zeros without media."""
        if media is None:
            return (0, 0, 0)
        height, width = media.resized_hw
        steps = 1 if media.kind == "image" else len(media.frame_indices) // self.temporal_patch
        return (steps, height // self.factor, width // self.factor)

    def _masks(
        self, record: Record, media: _Media | None, rows: Rows, phrases: list[str], counters: Counter[str]
    ) -> tuple[Rows, list[str], list[Any]]:
        """Masks of the instances the rows refer to; rows of instances without a valid cell are dropped.

        Returns rows with ``instance`` compacted to ``0..N-1`` and ``phrase`` to ``0..len(phrases)-1``.
        """
        if len(rows) == 0 or media is None:
            return rows, phrases, []
        masks: list[Any] = []
        keep = torch.ones(len(rows), dtype=torch.bool)
        for j in torch.unique(rows.instance).tolist():
            instance_masks = instance_cell_masks(
                record.annotation[j],
                media.frame_indices,
                media.source_hw,
                media.resized_hw,
                pixel_masks=self.cfg.pixel_masks,
                num_frames=media.num_frames,
                file=record.file,
                index=record.index,
                field=f"annotation[{j}]",
            )
            if bool(instance_masks.cell_valid.any()):
                masks.append(instance_masks)
                continue
            dropped = rows.instance == j
            tags = int(torch.unique(rows.phrase[dropped]).numel())
            counters["tag_dropped/no_valid_cell"] += tags
            counters["tags/kept"] -= tags
            keep &= ~dropped
        rows = rows.select(keep)
        if len(rows) == 0:
            return rows, [], []
        used_phrases, phrase = torch.unique(rows.phrase, return_inverse=True)
        _, instance = torch.unique(rows.instance, return_inverse=True)
        compact = Rows(query=rows.query, token=rows.token, instance=instance, phrase=phrase)
        return compact, [phrases[p] for p in used_phrases.tolist()], masks

    def _process(self, text: str, media: _Media | None) -> Mapping[str, Any]:
        if media is None:
            return self.processor(text=[text], return_tensors="pt")
        if media.kind == "image":
            return self.processor(text=[text], images=[media.frames[0]], return_tensors="pt")
        metadata = VideoMetadata(
            total_num_frames=media.num_frames, fps=media.fps, frames_indices=media.frame_indices
        )
        return self.processor(
            text=[text],
            videos=[media.frames],
            videos_kwargs={"video_metadata": [metadata]},
            return_tensors="pt",
        )


def record_media_field(record: Record) -> str:
    """The record field that holds its visual input (for error messages)."""
    return "video" if record.video is not None else "image" if record.image is not None else "conversations"


def _expanded_ids(ids: list[int], pad_index: int | None, num_visual: int) -> Tensor:
    """``(L,)`` long: the unexpanded ids with the visual placeholder repeated ``num_visual`` times."""
    out = torch.as_tensor(ids, dtype=torch.long)
    if pad_index is None:
        return out
    pad = out[pad_index : pad_index + 1].expand(num_visual)
    return torch.cat([out[:pad_index], pad, out[pad_index + 1 :]])
