"""Typed records: what an annotation file entry becomes once parsed and validated.

A :class:`Record` is still cheap: no video is opened and no mask decoded. Segmentations stay as
they are in the file (RLE with compressed or uncompressed counts, or polygons) until a sample is
loaded. A record that fails validation becomes a :class:`Rejection` instead, or, in strict mode,
raises :class:`RecordError` naming file, record index and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant"]
Format = Literal["nl_refer", "llava_video", "bench_q", "bench_d"]


@dataclass(frozen=True)
class Turn:
    """One conversation turn.

    Attributes:
        role: ``user`` or ``assistant``.
        text: the turn's text with its ``<ins>`` tags kept and ``<video>``/``<image>`` removed.
        visual_offset: character offset in ``text`` where the placeholder stood (the visual input
            goes there), or ``None`` if this turn had none.
    """

    role: Role
    text: str
    visual_offset: int | None = None


@dataclass
class Record:
    """One validated annotation record.

    Attributes:
        source: name of the mixture source it came from.
        file: the annotation file it was read from.
        index: its index within that file (0-based; line number minus one for JSONL).
        id: the record's own id (``id`` or ``index`` field), else ``"{file}:{index}"``.
        format: which of DATA.md's formats it is.
        video: absolute path of an mp4 file or a folder of frame images, or ``None``.
        image: absolute path of an image file, or ``None``.
        turns: the conversation, alternating user and assistant, at least one of each for training.
        annotation: per instance, frame index -> segmentation exactly as in the file
            (``{"size": [h, w], "counts": str | list[int]}`` or a polygon list).
        supervise: whether attention supervision is on for this record (its source's switch).
        extra: format-specific fields (bench: ``question``, ``options``, ``answer``, ``type``,
            ``frame_idx``, ``caption``).
    """

    source: str
    file: str
    index: int
    id: str
    format: Format
    turns: list[Turn]
    video: str | None = None
    image: str | None = None
    annotation: list[dict[int, Any]] = field(default_factory=list)
    supervise: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """Why a record (or a sample built from it) was refused.

    Attributes:
        file: the annotation file.
        index: the record's index within it.
        field: the offending field, e.g. ``conversations[1].value`` or ``annotation[0]["12"]``.
        reason: a short stable code used for counting, e.g. ``missing_video``, ``bad_rle``.
        detail: what was found and what was expected.
    """

    file: str
    index: int
    field: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: record {self.index}: field {self.field}: {self.reason}: {self.detail}"


class RecordError(ValueError):
    """A bad record in strict mode; the message names file, record index and field."""

    def __init__(self, rejection: Rejection):
        super().__init__(str(rejection))
        self.rejection = rejection


class SampleError(RuntimeError):
    """A record that parsed but cannot become a sample (unreadable video, bad RLE, ...).

    Raised while loading a sample; in training it is counted by ``rejection.reason`` and the sample
    skipped, with ``data.strict=true`` it propagates.
    """

    def __init__(self, rejection: Rejection):
        super().__init__(str(rejection))
        self.rejection = rejection
