"""Evaluation outputs: streamed JSONL rows, resumable; metrics JSON, Markdown tables, W&B tables.

Predictions and judge scores are appended to JSONL files as they are produced, one flushed line
each. A rerun in the same run dir reads them back and skips finished ids. A run killed mid-write
leaves at most one partial last line; it is cut off (and logged) before appending again. An item
whose sample cannot be loaded gets an ``error`` row (:func:`skip_failed`), which a rerun retries.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swim.data.schema import RecordError, SampleError

log = logging.getLogger(__name__)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file (``[]`` if it does not exist), ignoring a partial last line.

    Raises:
        ValueError: a line other than the last is not a JSON object (names file and line).
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                log.warning("%s: ignoring a partial last line %d (interrupted write)", path, number)
                continue
            raise ValueError(f"{path}: line {number}: not valid JSON") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


class JsonlLog:
    """An append-only JSONL file of rows keyed by ``id``; reopening it resumes where it stopped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict[str, Any]] = {}
        for row in read_jsonl(self.path):
            if "id" not in row:
                raise ValueError(f"{self.path}: a row without an 'id' field: {row}")
            self.rows[str(row["id"])] = row
        self._repair_tail()
        self._handle = self.path.open("a", encoding="utf-8")

    def _repair_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end == len(data):
            return
        try:
            json.loads(data[end:])
        except json.JSONDecodeError:
            with self.path.open("r+b") as handle:
                handle.truncate(end)
        else:
            with self.path.open("ab") as handle:
                handle.write(b"\n")

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def finished(self, item_id: object) -> bool:
        """Whether a successful row (one without ``error``) holds ``item_id``."""
        row = self.rows.get(str(item_id))
        return row is not None and "error" not in row

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (it must have an ``id``) and flush it to disk."""
        self.rows[str(row["id"])] = row
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def skip_failed(
    out: JsonlLog, item_id: str, error: SampleError | RecordError, failed: dict[str, int], *, strict: bool
) -> None:
    """Skip an item that cannot be evaluated: re-raise ``error`` if ``strict``; otherwise count it
    in ``failed`` by reason, log a warning and write an ``error`` row to ``out`` (a rerun retries it).
    """
    if strict:
        raise error
    reason = error.rejection.reason
    failed[reason] = failed.get(reason, 0) + 1
    log.warning("skipping %s: %s", item_id, error)
    out.write({"id": item_id, "error": reason, "detail": str(error)})


@dataclass
class Table:
    """A results table: a title, column names and rows of cells (numbers or text)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]

    def markdown(self) -> str:
        """The table in GitHub Markdown, floats with 4 significant decimals, under a heading."""
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join(" --- " for _ in self.columns) + "|")
        lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write_report(run_dir: str | Path, metrics: Mapping[str, Any], tables: list[Table]) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``results.md`` in ``run_dir``; returns both paths."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.json"
    metrics_path.write_text(json.dumps(dict(metrics), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    report_path = run_dir / "results.md"
    report_path.write_text("\n".join(table.markdown() for table in tables), encoding="utf-8")
    return metrics_path, report_path


def log_to_wandb(tables: list[Table], metrics: Mapping[str, Any], wandb_cfg: Mapping[str, Any]) -> None:
    """Log the tables (as ``wandb.Table``) and the flat metrics to a W&B run.

    ``wandb_cfg``: ``project``, ``name``, ``mode`` (``offline`` by default: no network, no key) and
    ``dir`` as ``wandb.init`` takes them.
    """
    import wandb

    run = wandb.init(
        project=wandb_cfg.get("project", "swim-eval"),
        name=wandb_cfg.get("name"),
        mode=wandb_cfg.get("mode", "offline"),
        dir=wandb_cfg.get("dir"),
        job_type="eval",
    )
    try:
        for table in tables:
            run.log({f"tables/{table.title}": wandb.Table(columns=table.columns, data=table.rows)})
        run.summary.update({key: value for key, value in metrics.items() if isinstance(value, (int, float))})
    finally:
        run.finish()
