"""Annotation records whose *content* is out of range or silently wrong, with known outcomes.

:func:`build_hostile_corpus` writes ``hostile.json`` (a JSON array) and ``hostile.jsonl`` (JSON
Lines) next to the square videos of ``corrupt_corpus``. Out-of-range values must become counted
rejections naming file, record and field, never a crash: integers over Python's 4,300-digit
conversion limit (as a JSON number and as a frame key), a string over the length limit, nesting
deeper than the format allows and deeper than the JSON decoder's recursion. Silent faults must be
named: two frame keys for one frame (``"7"`` and ``"07"``), empty masks (an all-zero RLE, a
polygon entirely outside the frame), upper-case tags (accepted), an exact duplicate record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from corrupt_corpus import HEIGHT, WIDTH, nl_refer_record, rle, square_frames, write_mp4

from swim.data.records import MAX_STRING_CHARS

ASK, SAY = "Describe the <ins>red square</ins>.", "The <ins>red square</ins> slides to the right."
HUGE_DIGITS = 5000
DEEP = 100_000  # beyond the JSON decoder's recursion limit
# Records that parse and must load; keyed by what they check.
GOOD = {"plain": 0, "upper_case_tags": 8, "duplicate": 9, "one_empty_mask": 10, "only_empty_masks": 11}


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def build_hostile_corpus(folder: str | Path) -> tuple[Path, Path, dict[int, tuple[str, str]]]:
    """Write ``hostile.json``, ``hostile.jsonl`` and ``media/good.mp4`` under ``folder``.

    Returns:
        The two files and, for ``hostile.json``, ``{record index: (reason, field)}`` of every
        record that must be rejected at parse time (indices in :data:`GOOD` must be kept). In
        ``hostile.jsonl`` lines 0 and 1 are rejected (``number_too_large`` at ``id``,
        ``too_deep``) and line 2 is kept.
    """
    folder = Path(folder)
    write_mp4(folder / "media" / "good.mp4", square_frames())

    def record(**changes: Any) -> dict[str, Any]:
        return {**nl_refer_record("media/good.mp4", ASK, SAY), **changes}

    plain = record()
    duplicate_frame = record()
    duplicate_frame["annotation"][0]["03"] = duplicate_frame["annotation"][0]["3"]
    huge_key = record()
    huge_key["annotation"][0]["9" * HUGE_DIGITS] = huge_key["annotation"][0]["3"]
    upper = nl_refer_record("media/good.mp4", "Where does the <INS>red square</Ins> go?", SAY)
    empty = rle(np.zeros((HEIGHT, WIDTH), dtype=bool))
    one_empty = record()
    one_empty["annotation"][0]["3"] = {"segmentation": empty}
    outside = [[WIDTH + 10.0, 0.0, WIDTH + 30.0, 0.0, WIDTH + 30.0, 20.0]]
    only_empty = record(annotation=[{"0": {"segmentation": empty}, "3": {"segmentation": outside}}])
    long_answer = [plain["conversations"][0], {"from": "gpt", "value": "x" * (MAX_STRING_CHARS + 1)}]

    # Texts spliced in after json.dumps: a JSON number too long for int(), and deep nesting.
    cases: list[tuple[dict[str, Any] | str, tuple[str, str] | None]] = [
        (plain, None),
        (json.dumps(record(id="@HUGE@")).replace('"@HUGE@"', "7" * HUGE_DIGITS), ("number_too_large", "id")),
        (
            json.dumps(record(meta={"size": "@HUGE@"})).replace('"@HUGE@"', "-" + "3" * HUGE_DIGITS),
            ("number_too_large", "meta.size"),
        ),
        (huge_key, ("bad_frame_key", "annotation[0]")),
        (record(conversations=long_answer), ("string_too_long", "conversations[1].value")),
        (json.dumps(record(meta="@DEEP@")).replace('"@DEEP@"', _deep(40)), ("too_deep", "meta")),
        (json.dumps(record(meta="@DEEP@")).replace('"@DEEP@"', _deep(DEEP)), ("too_deep", "<record>")),
        (duplicate_frame, ("duplicate_frame", 'annotation[0]["03"]')),
        (upper, None),
        (plain, None),
        (one_empty, None),
        (only_empty, None),
    ]
    texts = [case if isinstance(case, str) else json.dumps(case) for case, _ in cases]
    array = folder / "hostile.json"
    array.write_text("[\n" + ",\n".join(texts) + "\n]\n")
    lines = folder / "hostile.jsonl"
    lines.write_text("\n".join([texts[1], texts[6], texts[0]]) + "\n")
    return array, lines, {i: expected for i, (_, expected) in enumerate(cases) if expected is not None}
