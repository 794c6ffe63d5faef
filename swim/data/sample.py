"""One record -> one sample's tensors: frames, chat tokens, labels, supervised rows and masks.

:class:`SampleBuilder` loads the record's video (sampled frames, resized to multiples of the model
family's token side, :class:`~swim.data.spec.VisualSpec`) or
image with ``swim.data.media``, renders and tokenises the conversation, aligns the ``<ins>`` tags
to tokens, decodes the masks of the instances that tagged rows refer to (only on sampled annotated
frames), and runs the processor for pixel values. Every failure caused by the data raises
:class:`SampleError` naming file, record index and field; the dataset counts and skips those in
training.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from swim.data.chat import (
    RenderedChat,
    Rows,
    Visual,
    align,
    assign_instances,
    render_chat,
    tagged_phrases,
    tokenize_chat,
)
from swim.data.config import DataConfig
from swim.data.masks import decode_frame_masks, instance_cell_masks, resize_mask_nearest
from swim.data.media import VideoClip, load_image, load_video_clip
from swim.data.schema import Record, Rejection, SampleError
from swim.data.spec import VisualSpec, cell_timestamps

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
class Sample:
    """One sample's tensors (``L`` tokens, ``R`` supervised rows, ``N`` instances with masks).

    Attributes:
        id: the record's id.
        input_ids, attention_mask, labels, mm_token_type_ids: ``(L,)`` long.
        pixel_values_videos: ``(P, 3*2*p*p)`` float patches (``p`` the patch size: 14, or 16 for
            Qwen3-VL), ``video_grid_thw`` ``(1, 3)`` long,
            ``second_per_grid_ts`` ``(1,)`` float (``None`` for a family without it); all ``None``
            without video.
        pixel_values: ``(P, 1176)`` float image patches, ``image_grid_thw`` ``(1, 3)``; ``None`` without.
        rows: supervised rows; ``rows.instance`` indexes ``cell_masks``, ``rows.phrase`` ``phrases``.
        visual_keys: ``(T*h*w,)`` long, the positions of the video tokens in grid order
            (``swim/data/batch.py``); empty without video.
        grid: the video's token grid ``(T, h, w)``; ``(0, 0, 0)`` without video.
        cell_masks: ``N`` tensors ``(T, h, w)`` float; ``cell_valid``: ``N`` tensors ``(T,)`` bool.
        pixel_masks: ``N`` tensors ``(T, H, W)`` float, or ``None`` when not asked for.
        phrases: the tagged phrase of each phrase index.
        counters: events while building it (``tag_dropped/<reason>``, ``tags/kept``,
            ``mask_dropped/<reason>``, ``video/error_frames``: decoded frames that reported errors).
    """

    id: str
    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    mm_token_type_ids: Tensor
    rows: Rows
    visual_keys: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
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
    """Builds :class:`Sample` objects from records with a model family's processor.

    Args:
        processor: the family's processor, whose image/video processors do not resize
            (``do_resize=False``): frames arrive at multiples of ``spec.token_px``.
        cfg: the sample-building knobs.
        spec: the family's geometry and visual-token layout; ``None``: the default
            (Qwen2.5-VL's) :class:`~swim.data.spec.VisualSpec`. Checked against the processor.
    """

    def __init__(self, processor: Any, cfg: DataConfig | None = None, spec: VisualSpec | None = None):
        self.processor = processor
        self.cfg = cfg or DataConfig()
        self.spec = spec or VisualSpec()
        self.spec.check_processor(processor)
        if self.spec.temporal_patch != 2:
            raise ValueError(
                f"VisualSpec.temporal_patch={self.spec.temporal_patch}: temporal cells of 2 frames only"
            )
        self.tokenizer = processor.tokenizer
        self.factor = self.spec.token_px
        self.temporal_patch = self.spec.temporal_patch
        self.stopwatch = Stopwatch()

    def build(self, record: Record) -> Sample:
        """The sample of ``record``.

        Raises:
            SampleError: unreadable media, bad masks or tags, or a sequence over ``max_length``.
        """
        sw, cfg = self.stopwatch, self.cfg
        kind, clip = self._media(record)
        with sw("render_tokenise"):
            chat, ids, offsets, pad_index = self.chat_ids(record, kind)
        grid = self._grid(kind, clip)
        num_visual = grid[0] * grid[1] * grid[2]
        block = self._visual_ids(kind, clip, grid)
        length = len(ids) + (len(block) - 1 if clip is not None else 0)
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
                len(block),
                num_instances=num_instances,
                supervise=record.supervise,
                query=cfg.query,  # type: ignore[arg-type]
            )
        counters = Counter(alignment.counters)
        if clip is not None:
            counters["video/error_frames"] += clip.error_frames
        with sw("decode_masks"):
            rows, phrases, masks = self._masks(record, clip, alignment.rows, alignment.phrases, counters)
        with sw("processor"):
            out = self._process(chat.text, kind, clip)
        expected = _expanded_ids(ids, pad_index, block)
        if not torch.equal(out["input_ids"][0], expected):
            raise RuntimeError(
                f"{record.file}: record {record.index}: the processor's input_ids differ from the aligned "
                f"tokenisation (chat template, tokenizer or visual layout {self.spec.layout!r} mismatch)"
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
            if "second_per_grid_ts" in out:  # Qwen3-VL's processor has none: timestamps are text
                sample.second_per_grid_ts = torch.as_tensor(
                    out["second_per_grid_ts"], dtype=torch.float32
                ).reshape(1)
            sample.visual_keys = (expected == self.spec.video_pad_id).nonzero().flatten()
            if sample.visual_keys.numel() != num_visual:
                raise RuntimeError(f"{sample.visual_keys.numel()} video tokens for the grid {grid}")
            sample.grid = grid
            sample.cell_masks = [m.cell_masks for m in masks]
            sample.cell_valid = [m.cell_valid for m in masks]
        elif kind == "image":
            sample.pixel_values = out["pixel_values"]
            sample.image_grid_thw = out["image_grid_thw"]
        if cfg.pixel_masks:
            sample.pixel_masks = [m.pixel_masks for m in masks]
        return sample

    def chat_ids(
        self, record: Record, kind: Visual | None
    ) -> tuple[RenderedChat, list[int], np.ndarray, int | None]:
        """The record's chat rendered with ``kind``'s placeholder and tokenised once, unexpanded.

        The one rendering both :meth:`build` and the token-budget lengths (``swim.data.lengths``) use.

        Returns:
            The rendered chat, its ``L0`` token ids, their ``(L0, 2)`` int64 character offsets, and
            the index of the visual placeholder among them (``None`` when ``kind`` is ``None``).

        Raises:
            SampleError: malformed turns or tags.
            ValueError: the chat template does not place the visual placeholder once.
        """
        chat = render_chat(
            record.turns,
            processor=self.processor,
            system_prompt=self.cfg.system_prompt,
            visual=kind,
            file=record.file,
            index=record.index,
            label_span=self.cfg.label_span,
        )
        ids, offsets, pad_index = tokenize_chat(chat, self.tokenizer)
        return chat, ids, offsets, pad_index

    def load_visual(self, record: Record) -> VisualSample:
        """The sampled frames, the instances' masks on them and the tag phrases (no tokenisation)."""
        kind, clip = self._media(record)
        phrases = tagged_phrases(record.turns, file=record.file, index=record.index)
        base = VisualSample(record.id, None, None, [], [], [], phrases, [None] * len(phrases))
        if clip is None:
            return base
        base.kind, base.frames, base.frame_indices = kind, clip.frames, clip.frame_indices
        if kind != "video":
            return base
        height, width = clip.resized_hw
        for j, instance in enumerate(record.annotation):
            decoded = decode_frame_masks(
                instance,
                clip.frame_indices,
                clip.video_hw,
                num_frames=clip.num_frames,
                file=record.file,
                index=record.index,
                field=f"annotation[{j}]",
            )
            masks = np.zeros((len(clip.frame_indices), height, width), dtype=bool)
            annotated = np.zeros(len(clip.frame_indices), dtype=bool)
            for k, frame in enumerate(clip.frame_indices):
                if frame in decoded:
                    masks[k] = resize_mask_nearest(decoded[frame], height, width)
                    annotated[k] = True
            base.masks.append(masks)
            base.annotated.append(annotated)
        base.phrase_instance = assign_instances(phrases, len(record.annotation))
        return base

    def _media(self, record: Record) -> tuple[Visual | None, VideoClip | None]:
        """The record's visual input, its kind and frames; ``(None, None)`` for a text-only record."""
        where = {"file": record.file, "index": record.index, "factor": self.factor, "timer": self.stopwatch}
        if record.video is not None:
            return "video", load_video_clip(record.video, self.cfg, annotation=record.annotation, **where)
        if record.image is not None:
            return "image", load_image(record.image, self.cfg, **where)
        return None, None

    def _grid(self, kind: Visual | None, clip: VideoClip | None) -> tuple[int, int, int]:
        """Token grid ``(T, h, w)`` the clip will have after the processor; zeros without a clip."""
        if clip is None:
            return (0, 0, 0)
        height, width = clip.resized_hw
        steps = 1 if kind == "image" else len(clip.frame_indices) // self.temporal_patch
        return (steps, height // self.factor, width // self.factor)

    def _visual_ids(
        self, kind: Visual | None, clip: VideoClip | None, grid: tuple[int, int, int]
    ) -> list[int]:
        """The token ids the visual placeholder expands to (the spec's layout); empty without a clip."""
        if clip is None:
            return []
        if kind == "image":
            return [self.spec.image_pad_id] * (grid[1] * grid[2])
        times = cell_timestamps(clip.frame_indices, clip.fps, self.temporal_patch)
        return self.spec.video_ids(grid, times, self._tokenize)

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _masks(
        self, record: Record, clip: VideoClip | None, rows: Rows, phrases: list[str], counters: Counter[str]
    ) -> tuple[Rows, list[str], list[Any]]:
        """Masks of the instances the rows refer to; rows of instances without a valid cell are dropped.

        Returns rows with ``instance`` compacted to ``0..N-1`` and ``phrase`` to ``0..len(phrases)-1``.
        """
        if len(rows) == 0 or clip is None:
            return rows, phrases, []
        masks: list[Any] = []
        keep = torch.ones(len(rows), dtype=torch.bool)
        for j in torch.unique(rows.instance).tolist():
            instance_masks = instance_cell_masks(
                record.annotation[j],
                clip.frame_indices,
                clip.video_hw,
                clip.resized_hw,
                pixel_masks=self.cfg.pixel_masks,
                cell_rule=self.cfg.cell_rule,
                mask_resolution=self.cfg.mask_resolution,
                num_frames=clip.num_frames,
                file=record.file,
                index=record.index,
                field=f"annotation[{j}]",
                counters=counters,
                cell=self.factor,
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

    def _process(self, text: str, kind: Visual | None, clip: VideoClip | None) -> Mapping[str, Any]:
        if clip is None:
            return self.processor(text=[text], return_tensors="pt")
        if kind == "image":
            return self.processor(text=[text], images=[clip.frames[0]], return_tensors="pt")
        return self.processor(
            text=[text],
            videos=[clip.frames],
            videos_kwargs={"video_metadata": [clip.metadata()]},
            return_tensors="pt",
        )


def record_media_field(record: Record) -> str:
    """The record field that holds its visual input (for error messages)."""
    return "video" if record.video is not None else "image" if record.image is not None else "conversations"


def _expanded_ids(ids: list[int], pad_index: int | None, block: list[int]) -> Tensor:
    """``(L,)`` long: the unexpanded ids with the visual placeholder replaced by ``block``."""
    out = torch.as_tensor(ids, dtype=torch.long)
    if pad_index is None:
        return out
    return torch.cat([out[:pad_index], torch.as_tensor(block, dtype=torch.long), out[pad_index + 1 :]])
