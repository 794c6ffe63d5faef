"""The demo ablation: text-only vs SWIM training on the synthetic demo, grounding side by side.

    python -m swim.train.ablation [--seeds 42 1 2] [hydra overrides for both runs]
    make demo-ablation ARGS="--seeds 42 1 2"

Runs one multirun of ``train.py`` over ``experiment=demo_text_only,demo_swim`` (same data, model,
steps and seed; only the loss differs), then prints each run's validation grounding metrics
(fused attention of the tagged words vs the GT masks) in one table with the difference and the
ratio, between two reference points on the same validation split: ``chance`` (a uniform map) and
``oracle`` (the ground-truth mask at the token grid, the best a token-level map can score). The
multirun dir also holds the sweep summary, both runs' checkpoints and W&B offline runs.
"""

from __future__ import annotations

import argparse
import statistics
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
from swim.model.structured import to_dataclass
from swim.train.report import metrics_table
from swim.train.sweep import collect_jobs, is_headline

EXPERIMENTS = {"demo_text_only": "text-only", "demo_swim": "SWIM"}
#: The headline metric whose SWIM / text-only ratio the table adds.
RATIO_METRIC = "val/pointing_game"
#: Per experiment label, per seed, a run's headline validation metrics.
Runs = dict[str, dict[str, dict[str, float | None]]]
REPO = Path(__file__).resolve().parents[2]


def run_ablation(sweep_dir: Path, overrides: list[str], seeds: list[int]) -> int:
    """Train both experiments (for each seed) as one multirun into ``sweep_dir``; returns the exit status."""
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        f"experiment={','.join(EXPERIMENTS)}",
        f"hydra.sweep.dir={sweep_dir}",
        *([f"seed={','.join(map(str, seeds))}"] if seeds else []),
        *overrides,
    ]
    return subprocess.run(command, cwd=REPO, check=False).returncode


def ablation_runs(sweep_dir: Path) -> Runs:
    """Per experiment label, per seed (the job's ``seed=`` override, ``default`` without one), the run's
    headline validation metrics.

    Raises:
        RuntimeError: a run is missing or has no metrics (the error names its job dir).
    """
    runs: Runs = {label: {} for label in EXPERIMENTS.values()}
    for job in collect_jobs(sweep_dir):
        values = dict(o.split("=", 1) for o in job.overrides if "=" in o)
        experiment = values.get("experiment")
        if experiment not in EXPERIMENTS:
            continue
        if job.status != "finished":
            detail = f"{job.status} {job.error}".strip()
            raise RuntimeError(f"{sweep_dir / job.job}: the {experiment} run has no metrics ({detail})")
        runs[EXPERIMENTS[experiment]][values.get("seed", "default")] = {
            key: value for key, value in job.metrics.items() if key.startswith("val/") and is_headline(key)
        }
    missing = [label for label, seeds in runs.items() if not seeds]
    if missing:
        raise RuntimeError(f"{sweep_dir}: no finished run for {missing}")
    return runs


def _mean(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.fmean(known) if known else None


def ablation_columns(
    runs: dict[str, dict[str, dict[str, float | None]]],
) -> dict[str, dict[str, float | None]]:
    """Per experiment label, each metric's mean over seeds, plus ``SWIM - text-only``."""
    columns = {
        label: {
            key: _mean([metrics.get(key) for metrics in seeds.values()])
            for key in sorted({key for metrics in seeds.values() for key in metrics})
        }
        for label, seeds in runs.items()
    }
    text, swim = columns["text-only"], columns["SWIM"]
    columns["SWIM - text-only"] = {
        key: None if text.get(key) is None or swim.get(key) is None else swim[key] - text[key]
        for key in swim.keys() | text.keys()
    }
    return columns


def seed_ratios(
    runs: dict[str, dict[str, dict[str, float | None]]], metric: str = RATIO_METRIC
) -> dict[str, float]:
    """Per seed run in both experiments, SWIM's ``metric`` over text-only's (seeds where it is defined)."""
    ratios = {}
    for seed, swim in runs["SWIM"].items():
        text = runs["text-only"].get(seed, {}).get(metric)
        if text and swim.get(metric) is not None:
            ratios[seed] = swim[metric] / text
    return ratios


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
            f"val/{key}": float(value)
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
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[],
        help="train both runs once per seed (default: the config's)",
    )
    parser.add_argument("--report-only", action="store_true", help="print the table of an existing run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to both runs")
    args = parser.parse_args(argv)
    sweep_dir = args.sweep_dir or REPO / "logs" / "ablation" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if not args.report_only:
        status = run_ablation(sweep_dir, args.overrides, args.seeds)
        if status != 0:
            Console(stderr=True).print(f"[red]train.py failed ({status}); see {sweep_dir}[/]")
            return status
    runs = ablation_runs(sweep_dir)
    references = reference_columns(args.overrides)
    table = {"chance": references["chance"], **ablation_columns(runs), "oracle": references["oracle"]}
    seeds = ", ".join(sorted(runs["SWIM"]))
    console = Console()
    console.print(
        metrics_table(table, f"Demo ablation: validation grounding, mean over seeds {seeds} ({sweep_dir})")
    )
    chance = references["chance"][RATIO_METRIC]
    for seed, ratio in seed_ratios(runs).items():
        text, swim = runs["text-only"][seed][RATIO_METRIC], runs["SWIM"][seed][RATIO_METRIC]
        console.print(
            f"seed {seed}: {RATIO_METRIC} text-only {text:.3f}, SWIM {swim:.3f}: "
            f"SWIM / text-only = {ratio:.2f}x, SWIM / chance = {swim / chance:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
