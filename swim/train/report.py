"""What a training run leaves behind: ``metrics.json`` and the closing summary on the console.

``metrics.json`` (in the run dir) holds::

    {"status": "finished" | "stopped_by_signal",
     "optimized_metric": "val/pointing_game", "optimized_value": 0.41,
     "global_step": 300, "world_size": 1, "epoch": 1,
     "validate": {"val/pointing_game": 0.41, ...},     # trainer.validate after fit
     "fit": {"train/loss": 1.2, ...},                  # callback metrics at the end of fit
     "checkpoints": {"last": "...", "best": "...", "best_score": 0.41},
     "params": {"total": ..., "trainable": ..., "frozen": ...},
     "paths": {"run_dir": "...", "wandb": "..."}}

The sweep summary (:mod:`swim.train.sweep`) and the demo ablation read these files.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console
from rich.table import Table

from swim.train.checkpoints import CHECKPOINT_SUBDIR, LAST_NAME

METRICS_FILE = "metrics.json"
# Validation metrics shown first in the summary table (grounding of the attention, METHOD.md section 6).
GROUNDING_PREFIX = "val/"


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Plain floats from Lightning's metric dict (tensors and numbers; anything else dropped)."""
    scalars = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            scalars[key] = float(value.item())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            scalars[key] = float(value)
    return dict(sorted(scalars.items()))


def write_metrics_json(path: str | Path, content: Mapping[str, Any]) -> Path:
    """Write ``content`` as JSON atomically (a temp file, then ``os.replace``). NaN/inf become ``null``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(content), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics_json(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``metrics.json`` as a dict, or ``None`` if the run wrote none (it failed or is running)."""
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def metrics_table(columns: Mapping[str, Mapping[str, float | None]], title: str, prefix: str = "") -> Table:
    """A rich table: one row per metric key (those starting with ``prefix``), one column per run."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = sorted({key for values in columns.values() for key in values if key.startswith(prefix)})
    for key in keys:
        cells = []
        for values in columns.values():
            value = values.get(key)
            cells.append("-" if value is None else f"{value:.4f}")
        table.add_row(key, *cells)
    return table


def print_summary(report: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the validation grounding metrics and where the run's outputs went."""
    console = console or Console()
    validation = report.get("validate") or {}
    if validation:
        console.print(
            metrics_table({"value": validation}, "Validation (attention grounding)", GROUNDING_PREFIX)
        )
    else:
        console.print("[yellow]No validation metrics (validation disabled or training stopped early).[/]")
    where = Table(title=f"Run outputs ({report.get('status')})", show_header=False)
    where.add_column("what")
    where.add_column("path")
    paths = report.get("paths", {})
    checkpoints = report.get("checkpoints", {})
    rows = [
        ("run dir", paths.get("run_dir")),
        ("last checkpoint", checkpoints.get("last")),
        ("best checkpoint", checkpoints.get("best")),
        ("W&B offline dir", paths.get("wandb")),
        ("metrics.json", paths.get("metrics")),
    ]
    for what, path in rows:
        if path:
            where.add_row(what, str(path))
    console.print(where)


def checkpoint_paths(trainer: L.Trainer, output_dir: Path) -> dict[str, Any]:
    """The run's ``last.ckpt`` and the best checkpoint by the monitored metric (``None`` if not written)."""
    last = output_dir / CHECKPOINT_SUBDIR / LAST_NAME
    paths: dict[str, Any] = {"last": str(last) if last.exists() else None, "best": None, "best_score": None}
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor and callback.best_model_path:
            score = callback.best_model_score
            paths["best"] = callback.best_model_path
            paths["best_score"] = None if score is None else float(score)
    return paths


def output_paths(trainer: L.Trainer, output_dir: Path) -> dict[str, str | None]:
    """Where the run's outputs are: the run dir, the W&B offline run dir, ``metrics.json``."""
    wandb_dir = None
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            wandb_dir = str(Path(logger.experiment.dir).parent)
    return {"run_dir": str(output_dir), "wandb": wandb_dir, "metrics": str(output_dir / METRICS_FILE)}


def build_report(
    trainer: L.Trainer,
    output_dir: Path,
    *,
    status: str,
    fit: Mapping[str, float],
    validation: Mapping[str, float],
    optimized_metric: str | None,
    params: Mapping[str, int],
) -> dict[str, Any]:
    """The content of ``metrics.json`` (see the module docstring)."""
    return {
        "status": status,
        "optimized_metric": optimized_metric,
        "optimized_value": validation.get(optimized_metric) if optimized_metric else None,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "epoch": trainer.current_epoch,
        "validate": dict(validation),
        "fit": dict(fit),
        "checkpoints": checkpoint_paths(trainer, output_dir),
        "params": dict(params),
        "paths": output_paths(trainer, output_dir),
    }
