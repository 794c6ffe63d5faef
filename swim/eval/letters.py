"""Multiple-choice options and answer-letter parsing for VideoRefer-Bench-Q.

A model's reply is turned into an option letter only when it says one letter unambiguously; an
unparseable reply is reported as such (``None``) and counted, never guessed. Rules, first match wins:

1. the reply is a bare letter, optionally in brackets or with a trailing ``.``/``:``/``)``: ``B``,
   ``(b)``, ``B.``;
2. the reply opens with a letter and a delimiter: ``B) a hat``, ``(B) a hat``, ``B. A hat``, ``B: ...``,
   and names no other bracketed letter later (``(A) or (B)`` is ambiguous);
3. a letter after ``answer``/``option``/``choice`` (``The answer is B``, ``Answer: (b) a hat``,
   ``option C``); a lower-case letter there counts only in brackets or before punctuation or the end,
   so that ``The answer is a hat`` is not read as ``A``;
4. exactly one distinct bracketed letter anywhere: ``I think (C) fits``;
5. the reply equals one option's text, or contains exactly one option's text (word-bounded,
   case-insensitive): ``A hat`` -> the letter of ``(B) A hat``.

Markdown emphasis (``*``, backticks) is ignored: ``**B**`` is ``B``. Letters are valid only within
the question's options (``A`` to the n-th letter). Two different letters found by one rule make the
reply unparseable.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

_OPTION = re.compile(r"^\s*\(?([A-Za-z])[).:]\s*(.*?)\s*$", re.DOTALL)
_PUNCT = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")
_MARKUP = re.compile(r"[*`]")


@dataclass(frozen=True)
class Option:
    """One choice: its capital letter and its text without the letter prefix."""

    letter: str
    text: str


def parse_options(options: list[str]) -> list[Option]:
    """Split ``["(A) A helmet", ...]`` into letters and texts.

    Options without a letter prefix get ``A``, ``B``, ... in order. Mixed or out-of-order letters
    raise ``ValueError`` (the caller names the record).
    """
    if not options:
        raise ValueError("no options")
    parsed: list[Option] = []
    for position, raw in enumerate(options):
        expected = string.ascii_uppercase[position]
        match = _OPTION.match(raw)
        if match and match.group(1).upper() == expected:
            parsed.append(Option(expected, match.group(2)))
        elif match and match.group(1).isupper():
            raise ValueError(f"option {position} {raw!r}: expected letter {expected}")
        else:
            parsed.append(Option(expected, raw.strip()))
    return parsed


def answer_letter(answer: str, options: list[Option]) -> str:
    """The letter of the answer key (``"(A) A helmet"``, ``"A"`` or the option's text).

    Raises:
        ValueError: the key names no option.
    """
    letter = parse_letter(answer, options)
    if letter is None:
        raise ValueError(f"answer {answer!r} names none of the options {[o.letter for o in options]}")
    return letter


def _normalise(text: str) -> str:
    return _SPACES.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def _unique(letters: list[str]) -> str | None:
    distinct = set(letters)
    return distinct.pop() if len(distinct) == 1 else None


def _valid(letter: str, options: list[Option]) -> bool:
    return letter.upper() in {o.letter for o in options}


def _bare(reply: str, options: list[Option]) -> str | None:
    match = re.fullmatch(r"\(?([A-Za-z])\)?[.:)]?", reply)
    if match and _valid(match.group(1), options):
        return match.group(1).upper()
    return None


def _leading(reply: str, options: list[Option]) -> str | None:
    match = re.match(r"\(([A-Za-z])\)|([A-Z])[.:)](?=\s|$)|([a-z])\)(?=\s|$)", reply)
    if not match:
        return None
    letter = next(group for group in match.groups() if group).upper()
    others = {m.group(1).upper() for m in re.finditer(r"\(([A-Za-z])\)", reply[match.end() :])}
    if not _valid(letter, options) or others - {letter}:
        return None
    return letter


_KEYWORD = re.compile(
    r"\b(?i:answer|option|choice)\b(?:\s+(?i:is|would be|should be))?\s*[:=]?\s*"
    r"(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z])|([a-z])(?=\s*(?:[.,;:!)]|$)))"
)


def _keyword(reply: str, options: list[Option]) -> str | None:
    letters = [next(g for g in m.groups() if g) for m in _KEYWORD.finditer(reply)]
    return _unique([letter.upper() for letter in letters if _valid(letter, options)])


def _bracketed(reply: str, options: list[Option]) -> str | None:
    letters = [m.group(1).upper() for m in re.finditer(r"\(([A-Za-z])\)", reply)]
    return _unique([letter for letter in letters if _valid(letter, options)])


def _by_text(reply: str, options: list[Option]) -> str | None:
    said = _normalise(reply)
    texts = {o.letter: _normalise(o.text) for o in options if _normalise(o.text)}
    exact = [letter for letter, text in texts.items() if text == said]
    if exact:
        return _unique(exact)
    found = [letter for letter, text in texts.items() if re.search(rf"\b{re.escape(text)}\b", said)]
    return found[0] if len(found) == 1 else None


def parse_letter(reply: str, options: list[Option]) -> str | None:
    """The option letter a reply names, or ``None`` if it names none or several (see module doc)."""
    reply = _MARKUP.sub("", reply).strip()
    if not reply:
        return None
    for rule in (_bare, _leading, _keyword, _bracketed, _by_text):
        letter = rule(reply, options)
        if letter is not None:
            return letter
    return None
