"""Cheap structure checks of a raw record's ``annotation`` field (masks are never decoded).

Also the pieces of raw-record validation shared with ``swim.data.records``: the :class:`Invalid`
error that carries a field and a reason code, and the JSON type names and integer parsing its
messages and checks use. Masks are decoded, and checked against the video, when a sample is
loaded (``swim.data.masks``).
"""

from __future__ import annotations

import math
import re
from typing import Any


class Invalid(Exception):
    """A raw record fails validation at ``field``, with a reason code of ``REJECTION_REASONS``.

    ``swim.data.records.parse_record`` turns it into a :class:`~swim.data.schema.Rejection`.
    """

    def __init__(self, field: str, reason: str, detail: str):
        super().__init__(detail)
        self.field, self.reason, self.detail = field, reason, detail


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
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
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
        Invalid: ``bad_annotation``, ``bad_frame_key``, ``bad_rle`` or ``bad_polygon``, at the
            offending field (e.g. ``annotation[0]["12"].segmentation.counts``).
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
        for key, entry in instance.items():
            field = f'annotation[{i}]["{key}"]'
            frame = int_like(key)
            if frame is None or frame < 0 or key != key.strip():
                raise Invalid(field, "bad_frame_key", f"frame key {key!r}; expected a non-negative integer")
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
