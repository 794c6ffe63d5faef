"""Cheap structure checks of a raw record's ``annotation`` field (masks are never decoded).

Also the pieces of raw-record validation shared with ``swim.data.records`` and ``swim.data.cache``:
the :class:`Invalid` error that carries a field and a reason code, the JSON type names and integer
parsing its messages and checks use, and the decoder hook that keeps integers too long for Python's
int conversion as :class:`OversizedInt` (so a record can be rejected for them instead of the
decoder raising).

Frame keys are normalised to ints; two keys naming the same frame (``"7"`` and ``"07"``) are a
``duplicate_frame`` rejection, not a silent overwrite. Masks are decoded, and checked against the
video, when a sample is loaded (``swim.data.masks``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# Longest integer the JSON decoder turns into an int: Python's default int/str conversion limit.
MAX_INT_DIGITS = 4300
# Longest digit string accepted as a frame index (frame keys, ``frame_idx``).
MAX_INDEX_DIGITS = 12


class Invalid(Exception):
    """A raw record fails validation at ``field``, with a reason code of ``REJECTION_REASONS``.

    ``swim.data.records.parse_record`` turns it into a :class:`~swim.data.schema.Rejection`.
    """

    def __init__(self, field: str, reason: str, detail: str):
        super().__init__(detail)
        self.field, self.reason, self.detail = field, reason, detail


@dataclass(frozen=True)
class OversizedInt:
    """A JSON integer with more than :data:`MAX_INT_DIGITS` digits, kept undecoded."""

    digits: int


def parse_json_int(text: str) -> int | OversizedInt:
    """``parse_int`` hook of the JSON decoder: an int, or :class:`OversizedInt` past the digit limit."""
    digits = len(text) - text.startswith("-")
    return OversizedInt(digits) if digits > MAX_INT_DIGITS else int(text)


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters for messages (with the full length named)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def json_kind(value: Any) -> str:
    """How a JSON value is named in messages: ``an object``, ``a list``, ``null`` and so on."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def int_like(value: Any) -> int | None:
    """``value`` as an int if it is one (booleans excluded) or a string of digits, else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= MAX_INDEX_DIGITS and re.fullmatch(r"[0-9]+", value):
        return int(value)
    return None


def parse_annotation(value: Any) -> list[dict[int, Any]]:
    """Check a raw ``annotation`` field: a list of instances, each ``{frame: {"segmentation": S}}``.

    Args:
        value: the field as decoded from JSON (frame keys are strings of digits).

    Returns:
        Per instance, frame index (int) -> ``S`` unchanged: COCO RLE ``{"size": [h, w], "counts":
        str | list[int]}`` or a polygon list ``[[x1, y1, ...], ...]``.

    Raises:
        Invalid: ``bad_annotation``, ``bad_frame_key``, ``duplicate_frame``, ``bad_rle`` or
            ``bad_polygon``, at the offending field (e.g. ``annotation[0]["12"].segmentation.counts``).
    """
    if not isinstance(value, list):
        raise Invalid("annotation", "bad_annotation", f"expected a list of instances, got {json_kind(value)}")
    instances = []
    for i, instance in enumerate(value):
        if not isinstance(instance, dict):
            raise Invalid(
                f"annotation[{i}]", "bad_annotation", f"expected {{frame: ...}}, got {json_kind(instance)}"
            )
        frames: dict[int, Any] = {}
        keys: dict[int, str] = {}
        for key, entry in instance.items():
            shown = f'"{key}"' if len(key) <= 40 else short_repr(key)
            field = f"annotation[{i}][{shown}]"
            frame = int_like(key)
            if frame is None or frame < 0 or key != key.strip():
                raise Invalid(
                    field,
                    "bad_frame_key",
                    f"frame key {short_repr(key)}; expected a non-negative integer of at most "
                    f"{MAX_INDEX_DIGITS} digits",
                )
            if frame in keys:
                raise Invalid(
                    field,
                    "duplicate_frame",
                    f"frame key {key!r} is frame {frame}, already given as {keys[frame]!r}",
                )
            keys[frame] = key
            if not isinstance(entry, dict) or "segmentation" not in entry:
                raise Invalid(
                    field, "bad_annotation", f'expected {{"segmentation": ...}}, got {json_kind(entry)}'
                )
            _segmentation(entry["segmentation"], f"{field}.segmentation")
            frames[frame] = entry["segmentation"]
        instances.append(frames)
    return instances


def _segmentation(seg: Any, field: str) -> None:
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_positive_int(v) for v in size)):
            raise Invalid(f"{field}.size", "bad_rle", f"{size!r}; expected [h, w] positive integers")
        if isinstance(counts, str):
            if not counts:
                raise Invalid(f"{field}.counts", "bad_rle", "empty counts string")
        elif isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                raise Invalid(f"{field}.counts", "bad_rle", "expected a list of non-negative integers")
            if sum(counts) != size[0] * size[1]:
                raise Invalid(
                    f"{field}.counts", "bad_rle", f"runs sum to {sum(counts)}, size is {size[0]}x{size[1]}"
                )
        else:
            raise Invalid(
                f"{field}.counts", "bad_rle", f"expected a string or a list of ints, got {json_kind(counts)}"
            )
    elif isinstance(seg, list):
        if not seg:
            raise Invalid(field, "bad_polygon", "expected at least one polygon")
        for j, poly in enumerate(seg):
            ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
            if not ok or not all(_finite(v) for v in poly):
                raise Invalid(
                    f"{field}[{j}]", "bad_polygon", "expected an even number (>= 6) of finite coordinates"
                )
    else:
        raise Invalid(
            field, "bad_annotation", f"expected an RLE object or a polygon list, got {json_kind(seg)}"
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
