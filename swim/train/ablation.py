"""The demo ablation: text-only vs SWIM training on the synthetic demo, grounding side by side.

    python -m swim.train.ablation [hydra overrides for both runs]     # `make demo-ablation ARGS=...`

Runs one multirun of ``train.py`` over ``experiment=demo_text_only,demo_swim`` (same data, model,
steps and seed; only the loss differs), then prints each run's validation grounding metrics
(fused attention of the tagged words vs the GT masks) in one table with the difference and the
ratio, between two reference points on the same validation split: ``chance`` (a uniform map) and
``oracle`` (the ground-truth mask at the token grid, the best a token-level map can score). The
multirun dir also holds the sweep summary, both runs' checkpoints and W&B offline runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from rich.console import Console

from swim.data.datamodule import SwimDataModule
from swim.eval.grounding import GroundingMetrics, reference_maps, update_from_maps
from swim.model.backbone import BackboneConfig, load_processor
from swim.model.module import VAL_METRIC_NAMES
from swim.model.structured import to_dataclass
from swim.train.report import metrics_table
from swim.train.sweep import collect_jobs, is_headline

EXPERIMENTS = {"demo_text_only": "text-only", "demo_swim": "SWIM"}
#: The headline metric whose SWIM / text-only ratio the table adds.
RATIO_METRIC = "val/pointing_game"
REPO = Path(__file__).resolve().parents[2]


def run_ablation(sweep_dir: Path, overrides: list[str]) -> int:
    """Train both experiments as one multirun into ``sweep_dir``; returns train.py's exit status."""
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        f"experiment={','.join(EXPERIMENTS)}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    return subprocess.run(command, cwd=REPO, check=False).returncode


def ablation_columns(sweep_dir: Path) -> dict[str, dict[str, float | None]]:
    """Per experiment label, its headline validation metrics, plus ``SWIM - text-only``.

    Raises:
        RuntimeError: a run is missing or has no metrics (the error names its job dir).
    """
    columns: dict[str, dict[str, float | None]] = {}
    for job in collect_jobs(sweep_dir):
        experiment = next((o.split("=", 1)[1] for o in job.overrides if o.startswith("experiment=")), None)
        if experiment not in EXPERIMENTS:
            continue
        if job.status != "finished":
            detail = f"{job.status} {job.error}".strip()
            raise RuntimeError(f"{sweep_dir / job.job}: the {experiment} run has no metrics ({detail})")
        metrics = {
            key: value for key, value in job.metrics.items() if key.startswith("val/") and is_headline(key)
        }
        columns[EXPERIMENTS[experiment]] = metrics
    missing = [label for label in EXPERIMENTS.values() if label not in columns]
    if missing:
        raise RuntimeError(f"{sweep_dir}: no finished run for {missing}")
    text, swim = columns["text-only"], columns["SWIM"]
    columns["SWIM - text-only"] = {
        key: None if text.get(key) is None or swim.get(key) is None else swim[key] - text[key]
        for key in swim.keys() | text.keys()
    }
    return columns


def reference_columns(overrides: list[str]) -> dict[str, dict[str, float]]:
    """``chance`` and ``oracle`` grounding metrics on the ablation's validation split.

    Composes ``conf/train.yaml`` as the SWIM run does (``experiment=demo_swim`` plus ``overrides``)
    and scores :func:`~swim.eval.grounding.reference_maps` on its validation batches exactly as the
    module scores its fused maps.
    """
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={next(reversed(EXPERIMENTS))}", *overrides])
    processor = load_processor(to_dataclass(BackboneConfig, cfg.model.backbone, "model.backbone"))
    datamodule = SwimDataModule(cfg.data, processor=processor)
    datamodule.prepare_data()
    datamodule.setup("validate")
    metrics = {"chance": GroundingMetrics(), "oracle": GroundingMetrics()}
    seen = 0
    for batch in datamodule.val_dataloader():
        sample_index = seen + torch.arange(int(batch.input_ids.shape[0]))
        seen += int(sample_index.numel())
        for name, maps in reference_maps(batch.supervision).items():
            update_from_maps(metrics[name], maps, batch.supervision, sample_index)
    columns = {
        name: {
            f"val/{VAL_METRIC_NAMES.get(key, key)}": float(value)
            for key, value in metric.compute().items()
            if not key.startswith("num_")
        }
        for name, metric in metrics.items()
    }
    # Top-k of a map of ties is the first k tokens, not a chance level: leave it out.
    columns["chance"] = {k: v for k, v in columns["chance"].items() if "pointing_top" not in k}
    return columns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sweep-dir",
        type=Path,
        default=None,
        help="multirun dir (default: logs/ablation/<timestamp>); with --report-only, an existing one",
    )
    parser.add_argument("--report-only", action="store_true", help="print the table of an existing run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to both runs")
    args = parser.parse_args(argv)
    sweep_dir = args.sweep_dir or REPO / "logs" / "ablation" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if not args.report_only:
        status = run_ablation(sweep_dir, args.overrides)
        if status != 0:
            Console(stderr=True).print(f"[red]train.py failed ({status}); see {sweep_dir}[/]")
            return status
    columns = ablation_columns(sweep_dir)
    references = reference_columns(args.overrides)
    table = {"chance": references["chance"], **columns, "oracle": references["oracle"]}
    console = Console()
    console.print(metrics_table(table, f"Demo ablation: validation grounding ({sweep_dir})"))
    text, swim = columns["text-only"].get(RATIO_METRIC), columns["SWIM"].get(RATIO_METRIC)
    if text and swim is not None:
        chance = references["chance"][RATIO_METRIC]
        console.print(
            f"{RATIO_METRIC}: SWIM / text-only = {swim / text:.2f}x, SWIM / chance = {swim / chance:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
