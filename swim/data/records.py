"""Parse and validate one raw annotation record (a decoded JSON object) into a :class:`Record`.

The formats are those of ``docs/DATA.md``: ``nl_refer`` (NL-Refer-D and -Q), ``llava_video``
(video or image SFT), ``bench_q`` and ``bench_d`` (VideoRefer-Bench, original ``<objectN><region>``
and NL-Refer ``<ins>`` forms). Validation is cheap: media paths are only stat-ed and masks are
never decoded (``annotation`` is checked for structure only, by ``swim.data.annotation``; load-time
checks live in the sample builder and the data doctor). A bad record
becomes a :class:`Rejection` with a stable ``reason`` code from :data:`REJECTION_REASONS`, or, in
strict mode, raises :class:`RecordError` naming file, record index and field.

Conventions fixed here:

- ``<video>``/``<image>`` placeholders are removed from the text together with one newline that
  directly follows them; the character offset where they stood (in the tagged text) is kept in
  ``Turn.visual_offset``. Either placeholder may stand for either medium (LLaVA data writes
  ``<image>`` for videos too), but a record has at most one, and only in a user turn. A record
  with a visual input and no placeholder gets offset 0 of its first user turn.
- ``<ins>`` tags are matched in any letter case (``<INS>``, ``<Ins>``) and stored lower-case, so
  every later stage sees ``<ins>``. They are checked on the placeholder-free text. Unbalanced,
  nested and empty tags are
  ``bad_tags``. A tag whose phrase contains no letter or digit (``<ins>,</ins>``, ``<ins>--</ins>``)
  is ``tag_without_word``: the phrase names no word, so no token of it can be supervised.
- Bench records get turns usable for teacher forcing: ``bench_q`` asks the question followed by
  its options (one per line) and answers with ``Answer``; ``bench_d`` asks the record's own
  question if it has one, else :data:`BENCH_D_PROMPT` naming the object, and answers with
  ``caption``. All other top-level fields of any format go to ``Record.extra`` unchanged.
- ``Record.annotation`` keys are the frame indices as ints; segmentations are kept as in the file.
- Values out of range are rejected before anything else, naming the field: an integer of more than
  ``MAX_INT_DIGITS`` digits (``number_too_large``), a string (or key) of more than
  :data:`MAX_STRING_CHARS` characters (``string_too_long``), nesting deeper than :data:`MAX_DEPTH`
  (``too_deep``), bytes that are not UTF-8 (``invalid_utf8``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

from swim.data.annotation import (
    MAX_INT_DIGITS,
    Invalid,
    OversizedInt,
    int_like,
    json_kind,
    parse_annotation,
    short_repr,
)
from swim.data.schema import Format, Record, RecordError, Rejection, Turn
from swim.data.tags import OPEN_TAG, TagError, normalise_tags, strip_tags

FORMATS: tuple[str, ...] = get_args(Format)
TRAINING_FORMATS = ("nl_refer", "llava_video")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_PLACEHOLDER = re.compile(r"<video>\n?|<image>\n?")
_WORD = re.compile(r"\w")
# Longest string (or object key) in a record; RLE counts of a 4K mask stay far below it.
MAX_STRING_CHARS = 1 << 22
# Deepest nesting of arrays and objects in a record (polygons need 5 levels below the record).
MAX_DEPTH = 32

# The reference description prompt of VideoRefer-Bench-D; ``{object}`` is the object's reference:
# its ``<ins>``-tagged name in the NL-Refer form, VideoRefer's ``<object0><region>`` otherwise.
BENCH_D_PROMPT = "Please give a detailed description of the {object} in the video."
# Top-level fields that may name the object in words in NL-Refer bench records, in order of preference;
# the name is wrapped in <ins> tags unless it already carries them.
OBJECT_FIELDS = ("object", "expression", "ref", "referring_expression", "name")

REJECTION_REASONS: dict[str, str] = {
    "bad_json": "the line or record is not valid JSON",
    "too_deep": "arrays or objects nested deeper than the record format allows",
    "number_too_large": f"an integer of more than {MAX_INT_DIGITS} digits",
    "string_too_long": "a string or key longer than MAX_STRING_CHARS characters",
    "invalid_utf8": "a string holds bytes that are not valid UTF-8",
    "not_an_object": "the record is not a JSON object",
    "unknown_format": "no DATA.md format matches the record's fields",
    "missing_field": "a field the format requires is absent",
    "wrong_type": "a field has the wrong JSON type",
    "empty_conversation": "`conversations` is an empty list",
    "bad_role": "a turn's `from` is not human/user/gpt/assistant",
    "not_alternating": "turns do not alternate user, assistant, ... starting with the user",
    "no_assistant_turn": "a training record without any assistant turn",
    "bad_placeholder": "a <video>/<image> placeholder repeated or outside a user turn",
    "bad_tags": "unbalanced, nested or empty <ins> tags",
    "tag_without_word": "an <ins> tag around text with no letter or digit",
    "missing_video": "the video file or frame folder does not exist",
    "missing_image": "the image file does not exist",
    "bad_annotation": "`annotation` is not a list of {frame: {segmentation}} mappings",
    "bad_frame_key": "an annotation frame key is not a non-negative integer",
    "duplicate_frame": "two frame keys of one instance name the same frame (7 and 07)",
    "bad_rle": "an RLE segmentation without valid size [h, w] and counts",
    "bad_polygon": "a polygon segmentation that is not lists of >= 6 numbers of even length",
    "bad_frame_idx": "`frame_idx` is not a non-negative integer",
}


def detect_format(raw: Any) -> Format | None:
    """The DATA.md format a raw record has, from its fields, or ``None`` if none matches.

    ``conversations`` with ``annotation`` is ``nl_refer``, without it ``llava_video``; a question
    with options is ``bench_q``; a ``caption`` is ``bench_d``.
    """
    if not isinstance(raw, dict):
        return None
    if "conversations" in raw:
        return "nl_refer" if "annotation" in raw else "llava_video"
    if ("Question" in raw or "question" in raw) and "options" in raw:
        return "bench_q"
    if "caption" in raw:
        return "bench_d"
    return None


def parse_record(
    raw: Any,
    *,
    file: str,
    index: int,
    video_root: str | Path,
    format: str = "auto",
    source: str = "",
    supervise: bool = True,
    check_files: bool = True,
    strict: bool = False,
) -> Record | Rejection:
    """Validate one raw record.

    Args:
        raw: the decoded JSON value of the record.
        file: the annotation file it came from (for messages and ``Record.file``).
        index: its index in that file.
        video_root: folder that relative ``video``/``image`` paths are resolved against.
        format: one of :data:`FORMATS`, or ``auto`` to use :func:`detect_format`.
        source: the mixture source name, copied to ``Record.source``.
        supervise: the source's attention-supervision switch, copied to ``Record.supervise``.
        check_files: stat the video/image path (``False`` skips the file-system check).
        strict: raise :class:`RecordError` instead of returning a :class:`Rejection`.
    """
    try:
        return _parse(raw, file, index, Path(video_root), format, source, supervise, check_files)
    except Invalid as bad:
        rejection = Rejection(file=file, index=index, field=bad.field, reason=bad.reason, detail=bad.detail)
        if strict:
            raise RecordError(rejection) from None
        return rejection


def _parse(
    raw: Any,
    file: str,
    index: int,
    video_root: Path,
    format: str,
    source: str,
    supervise: bool,
    check_files: bool,
) -> Record:
    if not isinstance(raw, dict):
        raise Invalid("<record>", "not_an_object", f"expected a JSON object, got {json_kind(raw)}")
    if format == "auto":
        found = detect_format(raw)
        if found is None:
            raise Invalid(
                "<record>",
                "unknown_format",
                f"fields {sorted(raw)[:8]} match no format; expected `conversations` (nl_refer, "
                "llava_video), `Question`+`options` (bench_q) or `caption` (bench_d)",
            )
        fmt: str = found
    elif format in FORMATS:
        fmt = format
    else:
        raise ValueError(f"format={format!r}: expected 'auto' or one of {FORMATS}")
    _check_values(raw, "", 0)

    video = _media(raw, "video", video_root, check_files, "missing_video")
    image = _media(raw, "image", video_root, check_files, "missing_image")
    if video is None and image is None:
        raise Invalid(
            "video", "missing_field", "expected a `video` (file or frame folder) or an `image` path"
        )
    if video is not None and image is not None:
        raise Invalid("image", "wrong_type", "expected either `video` or `image`, the record has both")

    if fmt in TRAINING_FORMATS:
        turns = _conversation(raw)
        known = {"conversations", "annotation", "video", "image", "id"}
        extra = {}
    elif fmt == "bench_q":
        turns, extra = _bench_q(raw)
        known = {"Question", "question", "options", "Answer", "answer", "annotation", "video", "image", "id"}
    else:
        turns, extra = _bench_d(raw)
        known = {"caption", "Question", "question", "annotation", "video", "image", "id"}
    if "frame_idx" in raw:
        extra["frame_idx"] = _frame_idx(raw["frame_idx"])
    extra.update({key: value for key, value in raw.items() if key not in known and key not in extra})
    turns = _place_visual(turns)
    annotation = parse_annotation(raw.get("annotation", []))
    record_id = next((raw[key] for key in ("id", "index") if raw.get(key) is not None), f"{file}:{index}")
    return Record(
        source=source,
        file=file,
        index=index,
        id=str(record_id),
        format=fmt,  # type: ignore[arg-type]
        turns=turns,
        video=video,
        image=image,
        annotation=annotation,
        supervise=supervise,
        extra=extra,
    )


def _check_values(value: Any, field: str, depth: int) -> None:
    """Reject values out of range (module docs) and strings with undecodable bytes (lone
    surrogates from a ``surrogateescape`` read), naming the field."""
    where = field or "<record>"
    if isinstance(value, str):
        _check_string(value, where)
    elif isinstance(value, OversizedInt):
        raise Invalid(
            where, "number_too_large", f"an integer of {value.digits} digits (at most {MAX_INT_DIGITS})"
        )
    elif isinstance(value, (dict, list)):
        if depth >= MAX_DEPTH:
            raise Invalid(where, "too_deep", f"nested more than {MAX_DEPTH} levels deep")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                _check_string(key, where)
                name = key if len(key) <= 40 else short_repr(key)
                inner = f"{field}.{name}" if field else name
            else:
                inner = f"{field}[{key}]"
            _check_values(item, inner, depth + 1)


def _check_string(value: str, field: str) -> None:
    if len(value) > MAX_STRING_CHARS:
        raise Invalid(
            field, "string_too_long", f"a string of {len(value)} characters (at most {MAX_STRING_CHARS})"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = value[err.start : err.end].encode("utf-8", "surrogateescape")
        raise Invalid(field, "invalid_utf8", f"bytes {bad!r} at character {err.start}") from None


def _media(raw: dict, key: str, root: Path, check: bool, missing: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise Invalid(key, "wrong_type", f"expected a non-empty path string, got {json_kind(value)}")
    path = Path(value) if Path(value).is_absolute() else root / value
    if check and not (path.is_file() if key == "image" else path.exists()):
        raise Invalid(key, missing, f"{path} does not exist (video root {root})")
    return str(path)


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise Invalid(field, "wrong_type", f"expected a string, got {json_kind(value)}")
    return value


def _conversation(raw: dict) -> list[Turn]:
    _, convs = _field(raw, "conversations")
    if not isinstance(convs, list):
        raise Invalid("conversations", "wrong_type", f"expected a list of turns, got {json_kind(convs)}")
    if not convs:
        raise Invalid("conversations", "empty_conversation", "expected at least a user and an assistant turn")
    turns = []
    for i, turn in enumerate(convs):
        if not isinstance(turn, dict):
            raise Invalid(f"conversations[{i}]", "wrong_type", f"expected an object, got {json_kind(turn)}")
        for key in ("from", "value"):
            if key not in turn:
                raise Invalid(f"conversations[{i}].{key}", "missing_field", f"turn {i} has no `{key}`")
        role = ROLES.get(_text(turn["from"], f"conversations[{i}].from").lower())
        if role is None:
            raise Invalid(
                f"conversations[{i}].from", "bad_role", f"{turn['from']!r}; expected one of {list(ROLES)}"
            )
        turns.append(Turn(role=role, text=_text(turn["value"], f"conversations[{i}].value")))  # type: ignore[arg-type]
    if all(turn.role == "user" for turn in turns):
        raise Invalid(
            "conversations", "no_assistant_turn", f"{len(turns)} user turn(s) and no answer to train on"
        )
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            raise Invalid(
                f"conversations[{i}].from", "not_alternating", f"turn {i} is {turn.role}, expected {expected}"
            )
    if turns[-1].role == "user":
        last = len(turns) - 1
        raise Invalid(
            f"conversations[{last}]", "not_alternating", "the last user turn has no assistant answer"
        )
    return turns


def _field(raw: dict, *names: str) -> tuple[str, Any]:
    for name in names:
        if name in raw:
            return name, raw[name]
    raise Invalid(names[0], "missing_field", f"the record has no `{names[0]}` field")


def _bench_q(raw: dict) -> tuple[list[Turn], dict[str, Any]]:
    q_key, question = _field(raw, "Question", "question")
    question = _text(question, q_key)
    _, options = _field(raw, "options")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise Invalid(
            "options", "wrong_type", f"expected a non-empty list of strings, got {json_kind(options)}"
        )
    a_key, answer = _field(raw, "Answer", "answer")
    answer = _text(answer, a_key)
    prompt = "\n".join([question, *options])
    turns = [Turn("user", prompt), Turn("assistant", answer)]
    return turns, {"question": question, "options": list(options), "answer": answer}


def _bench_d(raw: dict) -> tuple[list[Turn], dict[str, Any]]:
    caption = _text(_field(raw, "caption")[1], "caption")
    extra: dict[str, Any] = {"caption": caption}
    if "Question" in raw or "question" in raw:
        key, question = _field(raw, "Question", "question")
        question = _text(question, key)
    else:
        name = next((key for key in OBJECT_FIELDS if key in raw), None)
        reference = "<object0><region>" if name is None else normalise_tags(_text(raw[name], name))
        if name is not None and OPEN_TAG not in reference:
            reference = f"<ins>{reference}</ins>"
        question = BENCH_D_PROMPT.format(object=reference)
    extra["question"] = question
    return [Turn("user", question), Turn("assistant", caption)], extra


def _frame_idx(value: Any) -> int:
    number = int_like(value)
    if number is None or number < 0:
        raise Invalid("frame_idx", "bad_frame_idx", f"{short_repr(value)}; expected a non-negative integer")
    return number


def _place_visual(turns: list[Turn]) -> list[Turn]:
    """Remove placeholders, keep their offset, check tags; offset 0 of the first user turn by default."""
    placed: list[Turn] = []
    seen: str | None = None
    for i, turn in enumerate(turns):
        field = f"conversations[{i}].value"
        matches = list(_PLACEHOLDER.finditer(turn.text))
        offset = None
        if matches:
            if turn.role != "user":
                raise Invalid(field, "bad_placeholder", f"{matches[0].group().strip()} in an assistant turn")
            if seen is not None or len(matches) > 1:
                raise Invalid(
                    field, "bad_placeholder", f"a second visual placeholder (first in {seen or field})"
                )
            seen, offset = field, matches[0].start()
        text = normalise_tags(_PLACEHOLDER.sub("", turn.text))
        _check_tags(text, field)
        placed.append(Turn(turn.role, text, offset))
    if seen is None:
        placed[0] = Turn(placed[0].role, placed[0].text, 0)
    return placed


def _check_tags(text: str, field: str) -> None:
    try:
        _, spans = strip_tags(text)
    except TagError as err:
        raise Invalid(field, "bad_tags", str(err)) from None
    for span in spans:
        if not _WORD.search(span.phrase):
            raise Invalid(
                field, "tag_without_word", f"<ins>{span.phrase}</ins> tags no word (letter or digit)"
            )
