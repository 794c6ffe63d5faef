"""Chat rendering and ``<ins>`` tag -> token alignment.

A record's turns are rendered with the processor's chat template into one string in which the
visual input is a single ``<|video_pad|>`` (or ``<|image_pad|>``) placeholder. While rendering we keep,
in character offsets of that string, every tagged phrase and every assistant answer (its text plus
the ``<|im_end|>`` that closes it). The fast tokenizer's offset mapping then turns these character
spans into token indices; the processor later expands the placeholder into ``N`` visual tokens, so
token indices after it shift by ``N - 1`` (``N`` counts every token of the expansion: visual
tokens, and in Qwen3-VL's layout the timestamps and markers between cells). Phrases are never
re-tokenised and searched for.

Positions below are *expanded* sequence positions (what the model sees) unless named otherwise.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from swim.data.schema import Rejection, SampleError, Turn
from swim.data.tags import TagError, strip_tags

Visual = Literal["video", "image"]
Query = Literal["predicting", "token"]

VISUAL_PAD = {"video": "<|video_pad|>", "image": "<|image_pad|>"}
END_OF_TURN = "<|im_end|>"
ASSISTANT_HEADER = "<|im_start|>assistant\n"
IGNORE_INDEX = -100

# Private-use characters bracket the sentinels that stand in for turn texts during rendering.
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")
_TAG = re.compile(r"</?ins>")


@dataclass(frozen=True)
class ChatTag:
    """A tagged phrase in the rendered text: characters ``[start, end)``, its turn and its words."""

    start: int
    end: int
    phrase: str
    turn: int


@dataclass
class RenderedChat:
    """A conversation rendered with the chat template.

    Attributes:
        text: the full chat text with one visual placeholder (if any) and no ``<ins>`` tags.
        tags: tagged phrases in order of appearance.
        answers: per assistant turn, characters ``[start, end)`` of its answer and its ``<|im_end|>``.
        visual: ``video``, ``image`` or ``None``.
    """

    text: str
    tags: list[ChatTag]
    answers: list[tuple[int, int]]
    visual: Visual | None


@dataclass
class Rows:
    """Supervised attention rows of one sample, ``(R,)`` long each.

    Attributes:
        query: sequence position whose attention row is supervised.
        token: sequence position of the tagged token.
        instance: the sample's instance index of the row (into its annotation, or compacted later).
        phrase: index of the tag (one ``<ins>`` occurrence) in the sample's ``phrases``.
    """

    query: Tensor
    token: Tensor
    instance: Tensor
    phrase: Tensor

    @classmethod
    def empty(cls) -> Rows:
        none = torch.zeros(0, dtype=torch.long)
        return cls(none, none, none, none)

    def __len__(self) -> int:
        return int(self.query.numel())

    def select(self, keep: Tensor) -> Rows:
        """Rows where the ``(R,)`` bool ``keep`` is true."""
        return Rows(self.query[keep], self.token[keep], self.instance[keep], self.phrase[keep])


@dataclass
class Alignment:
    """Token-level view of a rendered chat after visual expansion.

    Attributes:
        labels: ``(L,)`` long, the input ids on answer tokens, -100 elsewhere.
        rows: supervised rows (``instance`` indexes the record's annotation).
        phrases: the tagged phrase of each ``rows.phrase`` index.
        counters: tags dropped, by reason (``tag_dropped/<reason>``), and tags kept (``tags/kept``).
    """

    labels: Tensor
    rows: Rows
    phrases: list[str]
    counters: dict[str, int]


@dataclass(frozen=True)
class _Piece:
    """A run of turn text rendered through a sentinel: its clean text and where it came from."""

    text: str
    spans: tuple[Any, ...]
    offset: int
    turn: int
    answer: bool


def render_chat(
    turns: Sequence[Turn],
    *,
    processor: Any,
    system_prompt: str | None,
    visual: Visual | None,
    file: str = "?",
    index: int = -1,
    label_span: str = "answer",
) -> RenderedChat:
    """Render ``turns`` with ``processor.apply_chat_template``, keeping tag and answer spans.

    ``label_span`` sets each answer span: ``answer`` (the answer and its ``<|im_end|>``) or
    ``reference`` (also the ``<|im_start|>assistant\\n`` before it and the newline after it).

    The visual part goes into the turn that carries a ``visual_offset`` (split at that offset), or at
    the start of the first user turn if none does. Each text piece is rendered as a sentinel, then the
    sentinels are replaced by the clean texts, so spans are exact whatever the template adds around them.

    Raises:
        SampleError: malformed tags (``bad_tags``), a turn text that spells a special token
            (``special_token_in_text``), a visual placeholder inside a tagged phrase
            (``visual_inside_tag``), an empty or visual assistant turn (``bad_turn``); the error names
            the turn.
    """
    special = _special_tokens(processor)
    visual_turn = _visual_turn(turns) if visual is not None else None
    pieces: list[_Piece] = []
    messages: list[dict[str, Any]] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    for i, turn in enumerate(turns):
        field = f"turns[{i}].text"
        try:
            clean, spans = strip_tags(turn.text)
        except TagError as err:
            raise SampleError(Rejection(file, index, field, "bad_tags", str(err))) from err
        if "<" in clean:
            found = [tok for tok in special if tok in clean]
            if found:
                detail = f"text spells special token(s) {found}; expected plain text"
                raise SampleError(Rejection(file, index, field, "special_token_in_text", detail))
        cut = _visual_cut(turn) if i == visual_turn else None
        if cut is not None and any(s.start < cut < s.end for s in spans):
            detail = f"the visual placeholder at character {turn.visual_offset} lies inside a tagged phrase"
            raise SampleError(Rejection(file, index, field, "visual_inside_tag", detail))
        answer = turn.role == "assistant"
        if answer and (cut is not None or not clean):
            detail = "an assistant turn must be non-empty text without visual input"
            raise SampleError(Rejection(file, index, field, "bad_turn", detail))
        segments = [(0, len(clean))] if cut is None else [(0, cut), None, (cut, len(clean))]
        parts: list[dict[str, Any]] = []
        for segment in segments:
            if segment is None:
                parts.append({"type": visual})
                continue
            start, end = segment
            if end > start:
                inside = tuple(s for s in spans if start <= s.start < end)
                parts.append({"type": "text", "text": _SENTINEL.format(len(pieces))})
                pieces.append(_Piece(clean[start:end], inside, start, i, answer))
        messages.append({"role": turn.role, "content": parts[0]["text"] if answer else parts})
    template = processor.apply_chat_template(messages, tokenize=False)
    return _fill_sentinels(template, pieces, visual, label_span)


def _special_tokens(processor: Any) -> list[str]:
    tokenizer = getattr(processor, "tokenizer", processor)
    return list(tokenizer.get_added_vocab())


def _visual_turn(turns: Sequence[Turn]) -> int:
    for i, turn in enumerate(turns):
        if turn.visual_offset is not None:
            return i
    for i, turn in enumerate(turns):
        if turn.role == "user":
            return i
    return 0


def _visual_cut(turn: Turn) -> int:
    """Offset in the turn's clean text where the visual part goes.

    ``visual_offset`` counts characters of the tagged text; tags before it do not exist in the clean text.
    """
    if turn.visual_offset is None:
        return 0
    return len(_TAG.sub("", turn.text[: turn.visual_offset]))


def _fill_sentinels(
    template: str, pieces: Sequence[_Piece], visual: Visual | None, label_span: str = "answer"
) -> RenderedChat:
    out: list[str] = []
    length = 0
    cursor = 0
    tags: list[ChatTag] = []
    answers: list[tuple[int, int]] = []
    seen = 0
    for match in _SENTINEL_RE.finditer(template):
        number = int(match.group(1))
        if number != seen:
            raise ValueError(
                f"chat template reordered or duplicated turn texts (got {number}, expected {seen})"
            )
        seen += 1
        head = template[cursor : match.start()]
        out.append(head)
        length += len(head)
        piece = pieces[number]
        base = length - piece.offset
        tags.extend(ChatTag(base + s.start, base + s.end, s.phrase, piece.turn) for s in piece.spans)
        if piece.answer:
            if not template.startswith(END_OF_TURN, match.end()):
                raise ValueError(f"chat template does not close an assistant turn with {END_OF_TURN}")
            start, end = length, length + len(piece.text) + len(END_OF_TURN)
            if label_span == "reference":
                if not head.endswith(ASSISTANT_HEADER):
                    raise ValueError(
                        f"chat template does not open an assistant turn with {ASSISTANT_HEADER!r}"
                    )
                start -= len(ASSISTANT_HEADER)
                end += int(template.startswith("\n", match.end() + len(END_OF_TURN)))
            answers.append((start, end))
        out.append(piece.text)
        length += len(piece.text)
        cursor = match.end()
    if seen != len(pieces):
        raise ValueError(f"chat template dropped turn texts ({seen} of {len(pieces)} rendered)")
    out.append(template[cursor:])
    return RenderedChat(text="".join(out), tags=tags, answers=answers, visual=visual)


def tokenize_chat(chat: RenderedChat, tokenizer: Any) -> tuple[list[int], np.ndarray, int | None]:
    """Tokenise the unexpanded chat text once, with character offsets.

    Returns:
        ``ids`` (``L0`` ints), ``offsets`` ``(L0, 2)`` int64 character ranges, and the index of the
        visual placeholder token among the ``L0`` tokens (``None`` without visual input).

    Raises:
        ValueError: the placeholder does not appear exactly once.
    """
    encoding = tokenizer(chat.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    if chat.visual is None:
        return ids, offsets, None
    pad_id = tokenizer.convert_tokens_to_ids(VISUAL_PAD[chat.visual])
    where = [i for i, t in enumerate(ids) if t == pad_id]
    if len(where) != 1:
        raise ValueError(f"expected one {VISUAL_PAD[chat.visual]} in the chat text, found {len(where)}")
    return ids, offsets, where[0]


def char_span_tokens(offsets: np.ndarray, start: int, end: int) -> tuple[int, int]:
    """Unexpanded token range ``[first, last)`` whose characters overlap ``[start, end)``.

    ``offsets``: ``(L0, 2)`` character ranges, non-decreasing in both columns (a fast tokenizer's
    offsets on one text). A token belongs to the span if its range overlaps it.
    """
    first = int(np.searchsorted(offsets[:, 1], start, side="right"))
    last = int(np.searchsorted(offsets[:, 0], end, side="left"))
    return first, max(first, last)


def assign_instances(phrases: Sequence[str], num_instances: int) -> list[int | None]:
    """The instance each tagged phrase refers to (METHOD.md 1), ``None`` where there is none.

    One instance: every tag refers to it. Several: the j-th distinct phrase (compared after stripping,
    case-insensitively, in order of first appearance) refers to instance j.
    """
    if num_instances == 0:
        return [None] * len(phrases)
    if num_instances == 1:
        return [0] * len(phrases)
    order: dict[str, int] = {}
    out: list[int | None] = []
    for phrase in phrases:
        j = order.setdefault(phrase.strip().casefold(), len(order))
        out.append(j if j < num_instances else None)
    return out


def tagged_phrases(turns: Sequence[Turn], *, file: str = "?", index: int = -1) -> list[str]:
    """Every tagged phrase of the conversation, in order of appearance.

    Raises:
        SampleError: malformed tags (``bad_tags``), naming the turn.
    """
    phrases: list[str] = []
    for i, turn in enumerate(turns):
        try:
            phrases.extend(span.phrase for span in strip_tags(turn.text)[1])
        except TagError as err:
            raise SampleError(Rejection(file, index, f"turns[{i}].text", "bad_tags", str(err))) from err
    return phrases


def align(
    chat: RenderedChat,
    ids: Sequence[int],
    offsets: np.ndarray,
    pad_index: int | None,
    num_visual: int,
    *,
    num_instances: int,
    supervise: bool,
    query: Query = "predicting",
) -> Alignment:
    """Labels and supervised rows of the expanded sequence.

    Args:
        chat: the rendered chat.
        ids: the ``L0`` unexpanded token ids, ``offsets`` their ``(L0, 2)`` character ranges.
        pad_index: index of the visual placeholder among the ``L0`` tokens, or ``None``.
        num_visual: number of tokens the placeholder expands to (``T*h*w`` in the contiguous layout,
            plus the timestamps and vision markers between cells in the timestamped one,
            :mod:`swim.data.spec`); 0 without visual. Tags before the end of that block are dropped.
        num_instances: instances with masks in the record (0 disables supervision).
        supervise: the record's source switch; ``False`` drops every tag.
        query: ``predicting`` (row = tagged position - 1) or ``token`` (row = tagged position).

    Returns:
        ``labels`` ``(L,)`` with ``L = L0 - 1 + num_visual`` (``L0`` without visual) and the rows.
    """
    shift = num_visual - 1 if pad_index is not None else 0

    def expanded(first: int, last: int) -> np.ndarray:
        positions = np.arange(first, last, dtype=np.int64)
        if pad_index is not None:
            positions[positions > pad_index] += shift
        return positions

    length = len(ids) + shift
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    labels = torch.full((length,), IGNORE_INDEX, dtype=torch.long)
    for start, end in chat.answers:
        first, last = char_span_tokens(offsets, start, end)
        positions = torch.from_numpy(expanded(first, last))
        labels[positions] = ids_t[first:last]

    counters: Counter[str] = Counter()
    drop = _record_drop_reason(chat, supervise, num_instances)
    if drop is not None:
        if chat.tags:
            counters[f"tag_dropped/{drop}"] += len(chat.tags)
        return Alignment(labels, Rows.empty(), [], dict(counters))

    visual_end = (pad_index + num_visual) if pad_index is not None else 0
    instances = assign_instances([tag.phrase for tag in chat.tags], num_instances)
    query_shift = 1 if query == "predicting" else 0
    if query not in ("predicting", "token"):
        raise ValueError(f"query={query!r}: expected 'predicting' or 'token'")
    chunks: list[tuple[np.ndarray, int, int]] = []
    phrases: list[str] = []
    for tag, instance in zip(chat.tags, instances, strict=True):
        if instance is None:
            counters["tag_dropped/no_instance"] += 1
            continue
        tokens = expanded(*char_span_tokens(offsets, tag.start, tag.end))
        if tokens.size == 0:
            counters["tag_dropped/no_tokens"] += 1
            continue
        if tokens[0] - query_shift < visual_end:
            counters["tag_dropped/before_visual"] += 1
            continue
        chunks.append((tokens, instance, len(phrases)))
        phrases.append(tag.phrase)
    if phrases:
        counters["tags/kept"] += len(phrases)
    if not chunks:
        return Alignment(labels, Rows.empty(), [], dict(counters))
    token = torch.from_numpy(np.concatenate([c[0] for c in chunks]))
    instance = torch.cat([torch.full((c[0].size,), c[1], dtype=torch.long) for c in chunks])
    phrase = torch.cat([torch.full((c[0].size,), c[2], dtype=torch.long) for c in chunks])
    rows = Rows(query=token - query_shift, token=token, instance=instance, phrase=phrase)
    return Alignment(labels, rows, phrases, dict(counters))


def _record_drop_reason(chat: RenderedChat, supervise: bool, num_instances: int) -> str | None:
    if not chat.tags:
        return None
    if not supervise:
        return "unsupervised"
    if chat.visual != "video":
        return "no_video"
    if num_instances == 0:
        return "no_masks"
    return None
