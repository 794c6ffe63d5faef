"""VideoRefer-Bench-Q: multiple-choice prompts, answer rows, and accuracy per question type.

Accuracy counts every question of the split: an unparseable reply and a question skipped for an
unreadable video count as wrong, and both are reported in their own columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from swim.data.schema import Record, RecordError, Rejection
from swim.eval.generate import clean_prompt
from swim.eval.letters import Option, answer_letter, parse_letter, parse_options
from swim.eval.results import Table

QUESTION_TYPES = (
    "Basic Questions",
    "Sequential Questions",
    "Relationship Questions",
    "Reasoning Questions",
    "Future Predictions",
)
DEFAULT_PROMPT = "{question}\nOptions:\n{options}\nAnswer with the option's letter only."


def options_and_key(record: Record) -> tuple[list[Option], str]:
    """The record's parsed options and the letter of its answer key.

    Raises:
        RecordError: the options or the key cannot be read (names file, record index and field).
    """
    try:
        options = parse_options(list(record.extra["options"]))
    except (KeyError, ValueError) as error:
        raise RecordError(
            Rejection(record.file, record.index, "options", "bad_options", str(error))
        ) from None
    try:
        return options, answer_letter(str(record.extra.get("answer", "")), options)
    except ValueError as error:
        raise RecordError(Rejection(record.file, record.index, "Answer", "bad_answer", str(error))) from None


def question_prompt(record: Record, template: str = DEFAULT_PROMPT, region_text: str = "object {n}") -> str:
    """The user text for a Bench-Q record: ``template`` filled with the clean question and options."""
    options = "\n".join(record.extra["options"])
    return template.format(question=clean_prompt(record.extra["question"], region_text), options=options)


def answer_row(record: Record, reply: str) -> dict[str, Any]:
    """The JSONL row of one answered question: reply, parsed letter (``None``: unparseable), key."""
    options, key = options_and_key(record)
    letter = parse_letter(reply, options)
    return {
        "id": record.id,
        "type": str(record.extra.get("type", "unknown")),
        "reply": reply,
        "prediction": letter,
        "answer": key,
        "correct": letter == key,
    }


def score(rows: Sequence[dict[str, Any]], name: str) -> tuple[dict[str, float | int], Table]:
    """Accuracy per type and overall from answer rows (error rows count as skipped and wrong).

    Returns:
        Flat metrics (``{name}/accuracy``, ``{name}/accuracy/<type>``, ``{name}/unparseable``,
        ``{name}/skipped``, ``{name}/questions``) and the Markdown/W&B table.
    """
    order = [t for t in QUESTION_TYPES if any(r.get("type") == t for r in rows)]
    order += sorted({str(r.get("type")) for r in rows if "error" not in r} - set(order))
    counts: dict[str, list[int]] = {t: [0, 0, 0, 0] for t in [*order, "Overall"]}
    for row in rows:
        kinds = ["Overall"] if "error" in row else [str(row["type"]), "Overall"]
        for kind in kinds:
            tally = counts[kind]
            tally[0] += 1
            if "error" in row:
                tally[3] += 1
            elif row["prediction"] is None:
                tally[2] += 1
            elif row["correct"]:
                tally[1] += 1
    metrics: dict[str, float | int] = {}
    table_rows = []
    for kind, (total, correct, unparseable, skipped) in counts.items():
        accuracy = correct / total if total else float("nan")
        table_rows.append([kind, total, correct, unparseable, skipped, accuracy])
        suffix = "" if kind == "Overall" else "/" + kind.lower().replace(" ", "_")
        metrics[f"{name}/accuracy{suffix}"] = accuracy
    total, _, unparseable, skipped = counts["Overall"]
    metrics.update(
        {f"{name}/questions": total, f"{name}/unparseable": unparseable, f"{name}/skipped": skipped}
    )
    table = Table(
        title=f"{name}: VideoRefer-Bench-Q accuracy",
        columns=["Type", "Questions", "Correct", "Unparseable", "Skipped", "Accuracy"],
        rows=table_rows,
    )
    return metrics, table
