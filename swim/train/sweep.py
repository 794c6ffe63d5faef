"""Sweep summary: after a multirun, one table of every job's overrides and final metrics.

Registered as a Hydra callback in ``conf/hydra/default.yaml``. It reads each job dir's
``.hydra/overrides.yaml`` and ``metrics.json`` and writes ``sweep_summary.csv`` and
``sweep_summary.md`` into the multirun dir: after every job (``on_job_end``, so a sweep that Hydra
aborts because a job failed still has its summary) and once more when the multirun ends. Each job
also leaves ``job_status.json`` (Hydra's status and the error, if any) in its dir. A job without
``metrics.json`` is listed, never dropped: ``failed`` (with its error) when its job reported a
failure or the sweep is over, ``pending`` while it may still be running.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from swim.train.report import read_metrics_json

log = logging.getLogger(__name__)

SUMMARY_NAME = "sweep_summary"
JOB_STATUS_FILE = "job_status.json"


@dataclass
class JobResult:
    """One multirun job: its dir name, overrides, status and final validation metrics."""

    job: str
    overrides: list[str]
    status: str
    metrics: dict[str, float | None] = field(default_factory=dict)
    error: str = ""


def collect_jobs(sweep_dir: str | Path, missing: str = "failed") -> list[JobResult]:
    """Every job dir under ``sweep_dir`` (those holding ``.hydra/overrides.yaml``), in job order.

    Args:
        sweep_dir: the multirun dir.
        missing: the status of a job without ``metrics.json``.
    """
    jobs = []
    dirs = [path.parent.parent for path in Path(sweep_dir).glob("*/.hydra/overrides.yaml")]
    for job_dir in sorted(
        dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else p.name)
    ):
        overrides = [str(item) for item in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
        report = read_metrics_json(job_dir)
        if report is None:
            status_file = job_dir / JOB_STATUS_FILE
            job_status = json.loads(status_file.read_text()) if status_file.is_file() else {}
            error = str(job_status.get("error", ""))
            jobs.append(JobResult(job_dir.name, overrides, "failed" if error else missing, error=error))
            continue
        metrics = dict(report.get("validate") or report.get("fit") or {})
        if report.get("optimized_metric"):
            metrics[f"optimized:{report['optimized_metric']}"] = report.get("optimized_value")
        jobs.append(JobResult(job_dir.name, overrides, str(report.get("status", "finished")), metrics))
    return jobs


def _metric_keys(jobs: list[JobResult]) -> list[str]:
    return sorted({key for job in jobs for key in job.metrics})


def _format(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def is_headline(key: str) -> bool:
    """Metrics of the Markdown table: the fused-map metrics and losses (not per layer, not counts)."""
    return "/layer_" not in key and "/num_" not in key


def _rows(jobs: list[JobResult], keys: list[str]) -> list[list[str]]:
    return [
        [
            job.job,
            job.status,
            " ".join(job.overrides),
            *(_format(job.metrics.get(k)) for k in keys),
            job.error,
        ]
        for job in jobs
    ]


def write_summary(jobs: list[JobResult], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``sweep_summary.csv`` (every metric) and ``sweep_summary.md`` (headline metrics).

    Returns:
        The paths of both files.
    """
    out_dir = Path(out_dir)
    keys = _metric_keys(jobs)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["job", "status", "overrides", *keys, "error"])
    writer.writerows(_rows(jobs, keys))
    csv_path = _write_atomic(out_dir / f"{SUMMARY_NAME}.csv", buffer.getvalue())
    headline = [key for key in keys if is_headline(key)]
    header = ["job", "status", "overrides", *headline, "error"]
    lines = [f"# Sweep summary: {out_dir.name}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in _rows(jobs, headline):
        cells = (cell.replace("|", "\\|").replace("\n", " ") for cell in row)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Every metric of every job: {csv_path.name}"]
    md_path = _write_atomic(out_dir / f"{SUMMARY_NAME}.md", "\n".join(lines) + "\n")
    return csv_path, md_path


def _write_atomic(path: Path, text: str) -> Path:
    """Write through a temp file and ``os.replace`` (jobs on a cluster may write the summary at once)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


class SweepSummary(Callback):
    """Hydra callback writing the sweep summary into the multirun dir after each job and at the end."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        error = ""
        if job_return.status == JobStatus.FAILED:
            try:
                job_return.return_value  # noqa: B018  (re-raises the job's exception)
            except Exception as err:
                error = f"{type(err).__name__}: {err}"
        status = {"status": job_return.status.name.lower(), "error": error}
        _write_atomic(Path(config.hydra.runtime.output_dir) / JOB_STATUS_FILE, json.dumps(status) + "\n")
        write_summary(collect_jobs(config.hydra.sweep.dir, missing="pending"), config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect_jobs(sweep_dir)
        if not jobs:
            log.warning("Sweep summary: no job dirs under %s", sweep_dir)
            return
        csv_path, md_path = write_summary(jobs, sweep_dir)
        failed = sum(job.status == "failed" for job in jobs)
        log.info("Sweep summary of %d jobs (%d failed): %s, %s", len(jobs), failed, csv_path, md_path)
