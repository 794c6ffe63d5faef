"""Evaluate a SWIM checkpoint: ``python evaluate.py task=<task> ckpt=<path> [overrides]``.

Tasks (``conf/task/``): ``bench_q`` (VideoRefer-Bench-Q accuracy), ``bench_d`` (VideoRefer-Bench-D
descriptions scored by a judge LLM), ``grounding`` (METHOD.md section 6's attention metrics),
``visualize`` (heatmap PNGs, optionally before/after side by side) and ``predict`` (one question
about one video). ``ckpt`` is a Lightning ``.ckpt``, an exported Hugging Face folder, or null for
``model.backbone`` as configured. Outputs go to the Hydra run dir; see ``docs/evaluation.md``.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.markdown import Markdown

from swim.cli import run as run_cli
from swim.eval.tasks import run
from swim.train.console import quiet_known_noise
from swim.train.preflight import ConfigError, check_eval_config

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured task and print its tables; returns the flat metrics.

    Every benchmark file, video root, ``ckpt`` and ``input.video`` is checked first: a missing one
    stops the run with one message listing all of them (exit status 2), before any model loads.
    """
    run_dir = cfg.paths.output_dir
    quiet_known_noise()
    try:
        check_eval_config(cfg)
    except ConfigError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    report = run(cfg, run_dir)
    console = Console()
    for table in report.tables:
        console.print(Markdown(table.markdown()))
    console.print(f"[bold]run dir[/bold] {run_dir}")
    for path in report.files:
        console.print(f"  {path}")
    return report.metrics


if __name__ == "__main__":
    run_cli(main, "evaluate.py", "eval")
