"""The demo ablation: text-only vs SWIM training on the synthetic demo, grounding side by side.

    python -m swim.train.ablation [--seeds 42 1 2 3 4] [hydra overrides for every run]
    make demo-ablation ARGS="--seeds 42 1 2 3 4"

Runs one multirun of ``train.py`` over ``experiment=demo_text_only,demo_swim,demo_reference`` (same
data, model, steps and seed; only the loss differs: none, ours, the reference code's exactly),
then prints each run's validation grounding metrics (fused attention of the tagged words vs the GT
masks) in one table, between reference points on the same validation split: ``chance`` (a
uniform map), a training-free baseline (the text-only model's best 3 heads, chosen on the
training split by attention mass inside the mask: :mod:`swim.eval.heads`) and ``oracle`` (the
ground-truth mask at the token grid, the best a token-level map can score); then every seed's
pointing game. The multirun dir also holds the sweep summary, the runs' checkpoints and W&B
offline runs.
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
from omegaconf import DictConfig
from rich.console import Console

from swim.data.datamodule import SwimDataModule
from swim.eval.heads import best_heads, head_mass_in_mask, heads_grounding
from swim.metrics.grounding import GroundingMetrics, reference_maps, update_from_maps
from swim.model.backbone import BackboneConfig, load_processor
from swim.model.module import SwimModule
from swim.model.structured import to_dataclass
from swim.train.report import metrics_table
from swim.train.sweep import collect_jobs, is_headline
from swim.train.utils import ensure_demo_data

EXPERIMENTS = {"demo_text_only": "text-only", "demo_swim": "SWIM", "demo_reference": "SWIM (reference)"}
#: The training-free column: the text-only model's best heads.
HEADS = "text-only, best 3 heads"
#: How many heads the baseline averages, and how many training samples choose them.
NUM_HEADS = 3
SELECTION_SAMPLES = 128
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
        # Seed first: Hydra varies the last sweep override fastest, so each seed's runs finish together.
        *([f"seed={','.join(map(str, seeds))}"] if seeds else []),
        f"experiment={','.join(EXPERIMENTS)}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    return subprocess.run(command, cwd=REPO, check=False).returncode


def ablation_runs(sweep_dir: Path) -> Runs:
    """Per experiment label, per seed (the job's ``seed=`` override, ``default`` without one), the run's
    headline validation metrics; labels without a run (``SWIM (reference)``) are left out.

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
    missing = [label for label in ("text-only", "SWIM") if not runs[label]]
    if missing:
        raise RuntimeError(f"{sweep_dir}: no finished run for {missing}")
    return {label: seeds for label, seeds in runs.items() if seeds}


def text_only_jobs(sweep_dir: Path) -> dict[str, tuple[Path, list[str]]]:
    """Per seed, the finished text-only job's dir and overrides."""
    jobs = {}
    for job in collect_jobs(sweep_dir):
        values = dict(o.split("=", 1) for o in job.overrides if "=" in o)
        if values.get("experiment") == "demo_text_only" and job.status == "finished":
            jobs[values.get("seed", "default")] = (sweep_dir / job.job, job.overrides)
    return jobs


def load_job(
    job_dir: Path, overrides: list[str], stage: str
) -> tuple[DictConfig, SwimModule, SwimDataModule]:
    """A finished job's composed config, its last checkpoint's module (in eval mode) and its data
    set up for ``stage`` (``fit``: training and validation splits; ``validate``), at the job's
    model family's geometry (the demo generated first when missing)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    module = SwimModule.load_from_checkpoint(
        job_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    module.model.eval()
    spec = module.backbone_cfg.adapter.spec
    ensure_demo_data(cfg.data, token_px=spec.token_px)
    datamodule = SwimDataModule(cfg.data, processor=module.processor, spec=spec)
    datamodule.prepare_data()
    datamodule.setup(stage)
    return cfg, module, datamodule


def head_baseline(
    job_dir: Path, overrides: list[str]
) -> tuple[dict[str, float | None], list[tuple[int, int]]]:
    """The text-only run's best heads (chosen on training samples) scored on the validation split.

    Returns:
        The headline validation metrics (``val/...`` names) and the chosen (layer, head) pairs.
    """
    cfg, module, datamodule = load_job(job_dir, overrides, "fit")
    selection, seen = [], 0
    for batch in datamodule.train_dataloader():
        selection.append(batch)
        seen += batch.batch_size
        if seen >= SELECTION_SAMPLES:
            break
    query = str(cfg.loss.query)
    heads = best_heads(head_mass_in_mask(module, selection, query), NUM_HEADS)
    metrics = heads_grounding(module, datamodule.val_dataloader(), heads, query)
    named = {f"val/{key}": value for key, value in metrics.items()}
    return {key: value for key, value in named.items() if is_headline(key)}, heads


def _mean(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.fmean(known) if known else None


def ablation_columns(
    runs: dict[str, dict[str, dict[str, float | None]]],
) -> dict[str, dict[str, float | None]]:
    """Per column label, each metric's mean over seeds."""
    columns = {
        label: {
            key: _mean([metrics.get(key) for metrics in seeds.values()])
            for key in sorted({key for metrics in seeds.values() for key in metrics})
        }
        for label, seeds in runs.items()
    }
    return columns


def seed_ratios(
    runs: dict[str, dict[str, dict[str, float | None]]],
    metric: str = RATIO_METRIC,
    over: str = "text-only",
    of: str = "SWIM",
) -> dict[str, float]:
    """Per seed run in both columns, ``of``'s ``metric`` over ``over``'s (seeds where it is defined)."""
    ratios = {}
    for seed, numerator in runs.get(of, {}).items():
        denominator = runs.get(over, {}).get(seed, {}).get(metric)
        if denominator and numerator.get(metric) is not None:
            ratios[seed] = numerator[metric] / denominator
    return ratios


def reference_columns(overrides: list[str]) -> dict[str, dict[str, float]]:
    """``chance`` and ``oracle`` grounding metrics on the ablation's validation split.

    Composes ``conf/train.yaml`` as the last column's run does (``experiment=demo_reference`` plus
    ``overrides``: the same data and masks as every column's) and scores
    :func:`~swim.metrics.grounding.reference_maps` on its validation batches exactly as the module
    scores its fused maps.
    """
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={next(reversed(EXPERIMENTS))}", *overrides])
    backbone = to_dataclass(BackboneConfig, cfg.model.backbone, "model.backbone")
    ensure_demo_data(cfg.data, token_px=backbone.adapter.spec.token_px)
    datamodule = SwimDataModule(cfg.data, processor=load_processor(backbone), spec=backbone.adapter.spec)
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
    runs[HEADS] = {}
    chosen = {}
    for seed, (job_dir, job_overrides) in text_only_jobs(sweep_dir).items():
        runs[HEADS][seed], chosen[seed] = head_baseline(job_dir, job_overrides)
    references = reference_columns(args.overrides)
    order = ["text-only", HEADS, "SWIM (reference)", "SWIM"]
    columns = ablation_columns({label: runs[label] for label in order if runs.get(label)})
    table = {"chance": references["chance"], **columns, "oracle": references["oracle"]}
    seeds = ", ".join(sorted(runs["SWIM"]))
    console = Console()
    console.print(
        metrics_table(table, f"Demo ablation: validation grounding, mean over seeds {seeds} ({sweep_dir})")
    )
    chance = references["chance"][RATIO_METRIC]
    for seed in sorted(runs["SWIM"]):
        values = ", ".join(
            f"{label} {runs[label][seed][RATIO_METRIC]:.3f}"
            for label in order
            if runs.get(label, {}).get(seed, {}).get(RATIO_METRIC) is not None
        )
        ratios = [
            f"SWIM / {over} = {ratio:.2f}x"
            for over in ("text-only", HEADS, "SWIM (reference)")
            if (ratio := seed_ratios(runs, over=over).get(seed)) is not None
        ]
        swim = runs["SWIM"][seed][RATIO_METRIC]
        console.print(
            f"seed {seed}: {RATIO_METRIC} {values}; {', '.join(ratios)}, "
            f"SWIM / chance = {swim / chance:.1f}x; heads (layer, head) {chosen.get(seed)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
