"""``<ins>...</ins>`` tags: find them, remove them, and keep where they stood.

Tags mark the words that name the referred object; the model never sees them. They are matched
in any letter case (``<INS>...</Ins>``); :func:`normalise_tags` writes them lower-case. Stripping returns
the clean text and, per tag, the character span ``[start, end)`` of the tagged words in that
clean text. Token alignment maps these spans through the fast tokenizer's offsets elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPEN_TAG = "<ins>"
CLOSE_TAG = "</ins>"
_TAG = re.compile(r"</?ins>", re.IGNORECASE)


class TagError(ValueError):
    """Malformed tags: unbalanced, nested or empty. ``position`` is the offset in the tagged text."""

    def __init__(self, message: str, position: int):
        super().__init__(f"{message} at character {position}")
        self.position = position


@dataclass(frozen=True)
class TagSpan:
    """A tagged phrase: ``[start, end)`` in the clean text, and the phrase itself."""

    start: int
    end: int
    phrase: str


def normalise_tags(text: str) -> str:
    """``text`` with every ``<ins>``/``</ins>`` tag, in whatever letter case, written lower-case."""
    return _TAG.sub(lambda match: match.group().lower(), text)


def strip_tags(text: str) -> tuple[str, list[TagSpan]]:
    """Remove ``<ins>`` tags from ``text``.

    Returns:
        The text without tags and the tagged spans, in order of appearance.

    Raises:
        TagError: a tag is opened twice before closing (nested), closed without being opened,
            left open at the end, or encloses only white space.
    """
    pieces: list[str] = []
    spans: list[TagSpan] = []
    clean_len = 0
    cursor = 0
    open_at: int | None = None
    open_pos = 0
    for match in _TAG.finditer(text):
        chunk = text[cursor : match.start()]
        pieces.append(chunk)
        clean_len += len(chunk)
        cursor = match.end()
        if match.group().lower() == OPEN_TAG:
            if open_at is not None:
                raise TagError("nested <ins> tag", match.start())
            open_at, open_pos = clean_len, match.start()
        else:
            if open_at is None:
                raise TagError("</ins> without a matching <ins>", match.start())
            phrase = "".join(pieces)[open_at:clean_len]
            if not phrase.strip():
                raise TagError("empty <ins></ins> tag", open_pos)
            spans.append(TagSpan(open_at, clean_len, phrase))
            open_at = None
    if open_at is not None:
        raise TagError("<ins> never closed", open_pos)
    pieces.append(text[cursor:])
    return "".join(pieces), spans
