"""VideoRefer-Bench-D: description prompts, judge scoring, and the per-dimension table.

Descriptions are generated first (``bench.generate_records``), then each is judged; judgements are
streamed to their own JSONL file. A failed judgement (every attempt failed) is written with its
error, counted, left out of the means, and retried by a rerun; a judged one is never re-sent (the
run's JSONL and, across runs, the judge cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swim.data.schema import Record
from swim.eval.generate import clean_prompt
from swim.eval.judge import DIMENSION_TITLES, DIMENSIONS, Judge, Judgement
from swim.eval.results import JsonlLog, Table


def description_prompt(record: Record, region_text: str = "object {n}") -> str:
    """The user text for a Bench-D record: its question (the reference wording), tags removed."""
    return clean_prompt(record.extra["question"], region_text)


def description_row(record: Record, reply: str) -> dict[str, Any]:
    """The JSONL row of one generated description, with the reference caption."""
    return {"id": record.id, "reply": reply, "caption": record.extra["caption"]}


@dataclass
class JudgeStats:
    """One judging pass: judged now (of which from the cache), already done, and failed."""

    judged: int = 0
    cached: int = 0
    resumed: int = 0
    failed: int = 0


def judge_descriptions(judge: Judge, predictions: JsonlLog, judgements: JsonlLog) -> JudgeStats:
    """Judge every successful prediction row that has no successful judgement row yet."""
    stats = JudgeStats()
    todo = []
    for item_id, row in predictions.rows.items():
        if "error" in row:
            continue
        done = judgements.rows.get(item_id)
        if done is not None and done.get("scores") is not None:
            stats.resumed += 1
        else:
            todo.append((item_id, row["reply"], row["caption"]))

    def record(item_id: str, judgement: Judgement) -> None:
        judgements.write(
            {
                "id": item_id,
                "scores": judgement.scores,
                "error": judgement.error,
                "attempts": judgement.attempts,
                "cached": judgement.cached,
                "failures": judgement.failures,
            }
        )
        stats.judged += judgement.scores is not None
        stats.cached += judgement.cached
        stats.failed += judgement.scores is None

    judge.score_many(todo, record)
    return stats


def score(
    predictions: Sequence[dict[str, Any]], judgements: Sequence[dict[str, Any]], name: str
) -> tuple[dict[str, float | int], Table]:
    """Mean score per dimension and their average over the judged descriptions.

    Returns:
        Flat metrics (``{name}/<dimension>``, ``{name}/average``, ``{name}/judged``,
        ``{name}/judge_failed``, ``{name}/skipped``) and the table.
    """
    scored = [row["scores"] for row in judgements if row.get("scores") is not None]
    failed = sum(1 for row in judgements if row.get("scores") is None)
    skipped = sum(1 for row in predictions if "error" in row)
    metrics: dict[str, float | int] = {}
    rows = []
    for key in DIMENSIONS:
        mean = sum(s[key] for s in scored) / len(scored) if scored else float("nan")
        metrics[f"{name}/{key}"] = mean
        rows.append([DIMENSION_TITLES[key], mean])
    average = sum(metrics[f"{name}/{key}"] for key in DIMENSIONS) / len(DIMENSIONS)
    metrics[f"{name}/average"] = average
    rows.append(["Average", average])
    metrics.update(
        {f"{name}/judged": len(scored), f"{name}/judge_failed": failed, f"{name}/skipped": skipped}
    )
    title = f"{name}: VideoRefer-Bench-D ({len(scored)} judged, {failed} judge failures, {skipped} skipped)"
    return metrics, Table(title=title, columns=["Dimension", "Score (0-5)"], rows=rows)
