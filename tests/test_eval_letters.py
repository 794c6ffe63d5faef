"""The Bench-Q letter parser on realistic replies, and the accuracy arithmetic."""

from __future__ import annotations

import math

import pytest

from swim.data.schema import Record, RecordError, Turn
from swim.eval import bench_q
from swim.eval.letters import Option, answer_letter, parse_letter, parse_options

OPTIONS = parse_options(["(A) A helmet", "(B) A hat", "(C) Sunglasses", "(D) A red scarf"])


def test_parse_options():
    assert OPTIONS[1] == Option("B", "A hat")
    assert [o.letter for o in parse_options(["yes", "no"])] == ["A", "B"]
    assert parse_options(["A. left", "B. right"])[1] == Option("B", "right")
    with pytest.raises(ValueError, match="expected letter B"):
        parse_options(["(A) x", "(C) y"])


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("(b)", "B"),
        ("B.", "B"),
        ("B)", "B"),
        ("  C  ", "C"),
        ("B) A hat", "B"),
        ("(B) A hat", "B"),
        ("B. A hat", "B"),
        ("B: a hat", "B"),
        ("b) a hat", "B"),
        ("The answer is B", "B"),
        ("The answer is B.", "B"),
        ("The answer is (B).", "B"),
        ("The answer is b.", "B"),
        ("Answer: (b) a hat", "B"),
        ("Answer: B", "B"),
        ("answer: C, sunglasses", "C"),
        ("The correct answer is option D.", "D"),
        ("Option C", "C"),
        ("I would pick (D) because the scarf is red.", "D"),
        ("A hat", "B"),
        ("a hat.", "B"),
        ("Sunglasses", "C"),
        ("He is not wearing sunglasses.", "C"),
        ("A red scarf", "D"),
        ("The answer is a hat", "B"),
        ("**B**", "B"),
        ("The answer is **(C)**.", "C"),
        ("The correct option is (C) Sunglasses.", "C"),
        ("The best answer is: B. A hat", "B"),
        ("I think the answer is A, a helmet.", "A"),
    ],
)
def test_parses(reply, letter):
    assert parse_letter(reply, OPTIONS) == letter


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   ",
        "I don't know.",
        "E",
        "(E) a coat",
        "The answer is E.",
        "(A) or (B)",
        "A or B",
        "Either a helmet or a hat.",
        "The answer is a coat",
        "It is unclear from the video",
        "lists Martпре훤 sağlayan_POST",
    ],
)
def test_unparseable(reply):
    assert parse_letter(reply, OPTIONS) is None


def test_nested_option_texts_are_ambiguous_unless_exact():
    options = parse_options(["(A) A hat", "(B) A hat and a scarf"])
    assert parse_letter("A hat", options) == "A"
    assert parse_letter("a hat and a scarf", options) == "B"
    assert parse_letter("He wears a hat and a scarf today", options) is None


def test_answer_key():
    assert answer_letter("(A) A helmet", OPTIONS) == "A"
    assert answer_letter("Sunglasses", OPTIONS) == "C"
    with pytest.raises(ValueError, match="names none"):
        answer_letter("(F) nothing", OPTIONS)


def _record(i: int, answer: str, kind: str) -> Record:
    extra = {
        "question": "What is <ins>it</ins> not wearing?",
        "options": [f"({o.letter}) {o.text}" for o in OPTIONS],
    }
    extra.update({"answer": answer, "type": kind})
    return Record(
        "bench",
        "bench_q.json",
        i,
        str(i),
        "bench_q",
        [Turn("user", "q"), Turn("assistant", answer)],
        extra=extra,
    )


def test_accuracy_arithmetic_from_known_answers():
    """Known replies fed through the scorer: per-type and overall accuracy by hand."""
    cases = [
        ("(A) A helmet", "Basic Questions", "A"),
        ("(B) A hat", "Basic Questions", "The answer is C."),
        ("(C) Sunglasses", "Basic Questions", "no idea"),
        ("(D) A red scarf", "Sequential Questions", "D) a red scarf"),
        ("(A) A helmet", "Sequential Questions", "a helmet"),
        ("(B) A hat", "Future Predictions", "(b)"),
    ]
    rows = [bench_q.answer_row(_record(i, key, kind), reply) for i, (key, kind, reply) in enumerate(cases)]
    rows.append({"id": "99", "error": "missing_video", "detail": "..."})
    metrics, table = bench_q.score(rows, "demo")
    assert metrics["demo/accuracy/basic_questions"] == pytest.approx(1 / 3)
    assert metrics["demo/accuracy/sequential_questions"] == 1.0
    assert metrics["demo/accuracy/future_predictions"] == 1.0
    assert metrics["demo/accuracy"] == pytest.approx(4 / 7)
    assert (metrics["demo/questions"], metrics["demo/unparseable"], metrics["demo/skipped"]) == (7, 1, 1)
    assert [row[0] for row in table.rows] == [
        "Basic Questions",
        "Sequential Questions",
        "Future Predictions",
        "Overall",
    ]
    assert table.rows[0][1:5] == [3, 1, 1, 0]
    assert "| Overall | 7 | 4 | 1 | 1 | 0.5714 |" in table.markdown()


def test_empty_split_scores_nan():
    metrics, _ = bench_q.score([], "empty")
    assert math.isnan(metrics["empty/accuracy"])


def test_bad_answer_key_names_the_record():
    with pytest.raises(RecordError, match=r"bench_q.json: record 3: field Answer"):
        bench_q.answer_row(_record(3, "(Z) nothing", "Basic Questions"), "A")
