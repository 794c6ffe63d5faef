"""Every start of a run dir recorded: ``<run dir>/.hydra/overrides_history.yaml``.

Hydra rewrites ``.hydra/overrides.yaml`` at every start, so a run resumed in its own dir
(``ckpt_path=last hydra.run.dir=<run>``) lost the first part's overrides. This Hydra callback
(``conf/hydra/default.yaml``) appends one entry per start instead::

    - started: '2026-01-31T12:00:00'
      overrides: [trainer.max_steps=300]
    - started: '2026-01-31T14:10:05'
      overrides: [trainer.max_steps=300, ckpt_path=last, hydra.run.dir=logs/train/runs/...]
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

HISTORY_FILE = "overrides_history.yaml"


def append_overrides(history: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """Append one start with its ``overrides`` to the ``history`` file; returns all entries."""
    entries = yaml.safe_load(history.read_text()) if history.is_file() else None
    entries = list(entries or [])
    started = datetime.datetime.now().isoformat(timespec="seconds")
    entries.append({"started": started, "overrides": list(overrides)})
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text(yaml.safe_dump(entries, sort_keys=False))
    return entries


class OverridesHistory(Callback):
    """Appends each job start's command-line overrides to the run dir's history (module docs)."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        subdir = config.hydra.output_subdir
        if subdir is None:
            return
        history = Path(config.hydra.runtime.output_dir) / subdir / HISTORY_FILE
        append_overrides(history, OmegaConf.to_container(config.hydra.overrides.task))
