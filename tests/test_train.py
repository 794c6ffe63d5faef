"""train.py end to end on a small demo with the real module, datamodule, loggers and callbacks, and the
helpers around it (sweep summary, heatmap panel, secrets, checkpoint resolution)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from train_fixtures import FAST, compose_train, demo_overrides, read_metrics, read_wandb_run, run_train_py

from swim.model.backbone import build_processor
from swim.model.maps import RowHeatmap, SampleHeatmaps, cell_frames
from swim.train.ablation import (
    NUM_HEADS,
    ablation_columns,
    ablation_runs,
    head_baseline,
    load_job,
    seed_ratios,
)
from swim.train.callbacks import heatmap_rows
from swim.train.checkpoints import resolve_ckpt_path
from swim.train.console import StepProgressBar
from swim.train.heatmaps import COLORBAR_PX, LABEL_PX, RAMP, render_rows
from swim.train.sweep import collect_jobs, write_summary
from swim.train.utils import REDACTED, count_parameters, redact_secrets
from swim.train.wandb_run import read_run_id


def train_in_process(overrides: list[str], run_dir: Path) -> dict:
    from train import train

    return train(compose_train(overrides, run_dir))


def test_training_run_writes_checkpoints_logs_heatmaps_and_metrics(
    train_demo: Path, records_cache: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    report = train_in_process([*FAST, *demo_overrides(train_demo, records_cache), "logger=many"], run_dir)

    assert report == read_metrics(run_dir)
    assert report["status"] == "finished"
    assert report["global_step"] == 2
    assert report["optimized_metric"] == "val/pointing_game"
    assert report["optimized_value"] == report["validate"]["val/pointing_game"]
    assert 0.0 <= report["optimized_value"] <= 1.0
    assert "train/attn_loss" in report["fit"]
    params = report["params"]
    assert params["total"] == params["trainable"] + params["frozen"]
    assert params["frozen"] > 0 and params["trainable"] > 0
    assert report["checkpoints"]["last"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert Path(report["checkpoints"]["last"]).is_file()

    # The attention-loss keys are in the W&B offline run, the CSV log and TensorBoard's folder.
    (wandb_dir,) = (run_dir / "wandb").glob("offline-run-*")
    assert report["paths"]["wandb"] == str(wandb_dir)
    run = read_wandb_run(wandb_dir)
    assert {"train/attn_loss", "train/loss", "train/text_loss", "val/pointing_game"} <= run.history_keys
    assert any(key.startswith("val/attention_heatmaps") for key in run.history_keys)
    assert {"params", "loss", "model", "trainer"} <= run.config_keys
    assert run.exit_code == 0
    assert run.tags == ["demo"]
    with (run_dir / "csv" / "version_0" / "metrics.csv").open() as handle:
        assert "train/attn_loss" in next(csv.reader(handle))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert "val/attention_heatmaps" in events.Tags()["images"]
    assert "train/attn_loss" in events.Tags()["scalars"]
    # The W&B run id is kept in the run dir, for a resumed run to continue the same run.
    assert read_run_id(run_dir) == run.run_id
    (panel,) = (run_dir / "heatmaps").glob("step_*.png")
    assert Image.open(panel).size[0] > 0


def test_fast_dev_run(train_demo: Path, records_cache: Path, tmp_path: Path):
    overrides = [*FAST, *demo_overrides(train_demo, records_cache), "logger=csv", "trainer.fast_dev_run=true"]
    report = train_in_process(overrides, tmp_path / "run")
    assert report["status"] == "finished"
    assert report["global_step"] == 1
    assert "val/pointing_game" in report["validate"]


def test_multirun_jobs_get_own_dirs_grouped_wandb_runs_and_a_summary_without_secrets(
    train_demo: Path, records_cache: Path, tmp_path: Path
):
    sweep_dir = tmp_path / "sweep"
    secret = "test-secret-4f1d0c2b9a7e"
    run_train_py(
        [
            "-m",
            "loss.mask_weight=0,1",
            *FAST,
            *demo_overrides(train_demo, records_cache),
            "trainer.max_steps=1",
            "logger=wandb",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        env={"WANDB_API_KEY": secret},
    )
    with (sweep_dir / "sweep_summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["job"] for row in rows] == ["0", "1"]
    assert all(row["status"] == "finished" for row in rows)
    assert "loss.mask_weight=0" in rows[0]["overrides"].split()
    assert "loss.mask_weight=1" in rows[1]["overrides"].split()
    assert rows[0]["val/pointing_game"] == f"{read_metrics(sweep_dir / '0')['optimized_value']:.4f}"
    header = (sweep_dir / "sweep_summary.md").read_text().splitlines()[2]
    assert "val/pointing_game" in header and "val/layer_" not in header

    runs = [read_wandb_run(next((sweep_dir / job / "wandb").glob("offline-run-*"))) for job in ("0", "1")]
    assert runs[0].run_id != runs[1].run_id
    assert {run.group for run in runs} == {"sweep"}
    assert [run.name.split("-")[0] for run in runs] == ["0", "1"]
    assert all(run.exit_code == 0 for run in runs)
    assert "train/attn_loss" in runs[1].history_keys

    leaks = [path for path in sweep_dir.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
    assert leaks == []


@pytest.mark.slow
def test_a_failed_job_does_not_poison_the_next(train_demo: Path, records_cache: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    result = run_train_py(
        [
            "-m",
            "+callbacks.boom._target_=train_fixtures.RaiseAtStep",
            "+callbacks.boom.step=1,1000",
            *FAST,
            *demo_overrides(train_demo, records_cache),
            "logger=wandb",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        check=False,
    )
    assert result.returncode != 0
    assert "test failure at step 1" in result.stderr
    with (sweep_dir / "sweep_summary.csv").open() as handle:
        rows = {row["job"]: row for row in csv.DictReader(handle)}
    assert {job: row["status"] for job, row in rows.items()} == {"0": "failed", "1": "finished"}
    assert rows["0"]["error"] == "RuntimeError: test failure at step 1"
    failed, finished = (read_wandb_run(next((sweep_dir / j / "wandb").glob("offline-run-*"))) for j in "01")
    assert failed.exit_code == 1
    assert finished.exit_code == 0
    assert failed.run_id != finished.run_id
    assert "val/pointing_game" in finished.history_keys


def test_sweep_summary_lists_every_job(tmp_path: Path):
    for job, metrics in (
        ("0", {"val/pointing_game": 0.25, "val/layer_1/iou50": 0.1}),
        ("1", None),
        ("2", None),
        ("10", {}),
    ):
        hydra_dir = tmp_path / job / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "overrides.yaml").write_text(f"- loss.mask_weight={job}\n- loss.layers=[1,2]\n")
        if metrics is not None:
            report = {"status": "finished", "validate": metrics, "optimized_metric": "val/pointing_game"}
            report["optimized_value"] = metrics.get("val/pointing_game")
            (tmp_path / job / "metrics.json").write_text(json.dumps(report))
    (tmp_path / "2" / "job_status.json").write_text('{"status": "failed", "error": "ValueError: bad"}')
    jobs = collect_jobs(tmp_path)
    statuses = [(job.job, job.status, job.error) for job in jobs]
    assert statuses == [
        ("0", "finished", ""),
        ("1", "failed", ""),
        ("2", "failed", "ValueError: bad"),
        ("10", "finished", ""),
    ]
    assert jobs[0].overrides == ["loss.mask_weight=0", "loss.layers=[1,2]"]
    csv_path, md_path = write_summary(jobs, tmp_path)
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["val/pointing_game"] == "0.2500"
    assert rows[0]["val/layer_1/iou50"] == "0.1000"
    assert rows[1]["val/pointing_game"] == ""
    markdown = md_path.read_text()
    assert "val/pointing_game" in markdown and "val/layer_1/iou50" not in markdown
    assert collect_jobs(tmp_path, missing="pending")[1].status == "pending"


def test_heatmap_panel_draws_attention_over_cells_next_to_the_mask():
    attention = torch.zeros(2, 3, 4)
    attention[0, 1, 2] = 1.0
    mask = torch.zeros(2, 3, 4)
    mask[0, 1, 2] = 1.0
    rows = [
        RowHeatmap(
            token_id=token_id,
            token_position=position,
            phrase=0,
            instance=0,
            fused=attention,
            cell_masks=mask,
            cell_valid=torch.tensor([True, False]),
        )
        for token_id, position in ((2518, 40), (12671, 41))
    ]
    sample = SampleHeatmaps(sample_id="demo/0", grid=(2, 3, 4), rows=rows)
    tokenizer = build_processor().tokenizer
    picked = heatmap_rows([sample, sample], max_rows=4, tokenizer=tokenizer)
    # One row per phrase, titled with the whole phrase; the attention peak is inside the mask in cell 0.
    phrase = tokenizer.decode([2518, 12671]).strip()
    assert [row.title.split(" | ")[:2] for row in picked] == [["demo/0", f"phrase 0 {phrase!r}"]] * 2
    assert picked[0].scores == [1.0, None]
    panel = np.asarray(render_rows(picked, tile_px=40))
    step, title = 40 + 2, 14
    assert panel.shape == (2 * (title + 2 * step) + COLORBAR_PX + title, LABEL_PX + 2 * step, 3)
    # Cell 0: the attention's peak (token row 1, column 2) is the ramp's top colour, elsewhere its bottom.
    tile_h = 30  # 40 * 3 / 4
    peak = panel[title + tile_h // 2, LABEL_PX + 2 * 10 + 5]
    assert np.abs(peak.astype(int) - RAMP[-1]).max() <= 1
    assert np.abs(panel[title + tile_h - 2, LABEL_PX + 2].astype(int) - RAMP[0]).max() <= 1
    # The label column holds text (dark pixels) next to both rows; the colour bar runs low to high.
    assert panel[title : title + 12, :LABEL_PX].min() < 100
    assert panel[title + step : title + step + 12, :LABEL_PX].min() < 100
    bar = panel[2 * (title + 2 * step) + COLORBAR_PX // 2, LABEL_PX:]
    assert (
        np.abs(bar[0].astype(int) - RAMP[0]).max() <= 2 and np.abs(bar[-1].astype(int) - RAMP[-1]).max() <= 2
    )


def test_secrets_are_redacted(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_API_KEY", "abc123secret")
    config = {
        "judge": {"api_key": "sk-live", "api_key_env": "", "model": "gpt"},
        "notes": ["token abc123secret inside"],
        "hf_token": None,
    }
    clean = redact_secrets(config)
    assert clean["judge"] == {"api_key": REDACTED, "api_key_env": "", "model": "gpt"}
    assert clean["notes"] == [REDACTED]
    assert clean["hf_token"] is None


def test_resolve_ckpt_path(tmp_path: Path):
    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("last", tmp_path) is None  # first start of a requeueable job
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    assert resolve_ckpt_path("last", tmp_path) == str(last)
    assert resolve_ckpt_path(str(tmp_path), tmp_path / "elsewhere") == str(last)
    assert resolve_ckpt_path(str(last), tmp_path) == str(last)
    with pytest.raises(FileNotFoundError, match="expected 'last', a run/checkpoint directory"):
        resolve_ckpt_path(str(tmp_path / "missing.ckpt"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no checkpoints/last\.ckpt or last\.ckpt"):
        resolve_ckpt_path(str(tmp_path / "empty"), tmp_path)


def test_count_parameters_splits_trainable_and_frozen():
    layer = torch.nn.Linear(3, 2)
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == {"total": 8, "trainable": 6, "frozen": 2}


def _grounding_by_row():
    """``benchmarks/grounding_by_row.py`` as a module (benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "grounding_by_row.py"
    spec = importlib.util.spec_from_file_location("grounding_by_row", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_finished_job_reloads_for_the_heads_baseline_and_the_rows_benchmark(
    train_demo: Path, records_cache: Path, tmp_path: Path
):
    overrides = [*FAST, *demo_overrides(train_demo, records_cache), "logger=csv", "loss=text_only"]
    job_dir = tmp_path / "0"
    train_in_process(overrides, job_dir)

    cfg, module, datamodule = load_job(job_dir, overrides, "validate")
    assert cfg.loss.mask_weight == 0 and not module.model.training
    assert module.backbone_cfg.family == "qwen2_5_vl"
    assert len(datamodule.val_dataloader()) > 0

    metrics, heads = head_baseline(job_dir, overrides)
    assert len(heads) == NUM_HEADS == len(set(heads))
    assert 0.0 <= metrics["val/pointing_game"] <= 1.0

    rows = _grounding_by_row()
    predicting = rows.job_grounding(job_dir, overrides, "val", None)
    token = rows.job_grounding(job_dir, overrides, "val", None, query="token")
    for scores in (predicting, token):
        pairs = {name: count for name, (_, count) in scores.items()}
        assert pairs["all"] > 0
        assert pairs["seen"] + pairs["unseen"] == pairs["all"] == pairs["first"] + pairs["later"]
        assert all(0.0 <= value <= 1.0 for value, _ in scores.values())
    # The same pairs, scored on other rows.
    assert token["all"][1] == predicting["all"][1]


def test_ablation_table_averages_seeds_and_puts_text_only_and_swim_side_by_side(tmp_path: Path):
    runs = (
        ("demo_text_only", 1, 0.25),
        ("demo_swim", 1, 0.5),
        ("demo_text_only", 2, 0.15),
        ("demo_swim", 2, 0.6),
    )
    for job, (experiment, seed, pointing) in enumerate(runs):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(
            f"- experiment={experiment}\n- seed={seed}\n"
        )
        validate = {"val/pointing_game": pointing, "val/layer_1/pointing_game": 0.1, "val/num_pairs": 16.0}
        (tmp_path / str(job) / "metrics.json").write_text(
            json.dumps({"status": "finished", "validate": validate})
        )
    found = ablation_runs(tmp_path)
    assert found["SWIM"] == {"1": {"val/pointing_game": 0.5}, "2": {"val/pointing_game": 0.6}}
    columns = ablation_columns(found)
    assert list(columns) == ["text-only", "SWIM"]
    assert columns["text-only"]["val/pointing_game"] == pytest.approx(0.2)
    assert columns["SWIM"]["val/pointing_game"] == pytest.approx(0.55)
    assert seed_ratios(found) == {"1": pytest.approx(2.0), "2": pytest.approx(4.0)}
    assert seed_ratios(found, over="SWIM (reference)") == {}
    (tmp_path / "1" / "metrics.json").unlink()
    with pytest.raises(RuntimeError, match=r"1: the demo_swim run has no metrics \(failed\)"):
        ablation_runs(tmp_path)


@pytest.mark.slow
def test_optuna_search_runs_trials_and_records_the_best(
    train_demo: Path, records_cache: Path, tmp_path: Path
):
    sweep_dir = tmp_path / "optuna"
    run_train_py(
        [
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            *FAST,
            *demo_overrides(train_demo, records_cache),
            "trainer.max_steps=1",
            "logger=csv",
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    values = [read_metrics(sweep_dir / job)["optimized_value"] for job in ("0", "1")]
    assert best["best_value"] == pytest.approx(max(values))
    assert set(best["best_params"]) == {"loss.mask_weight", "loss.layers"}
    with (sweep_dir / "sweep_summary.csv").open() as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["finished", "finished"]


def test_cell_frames_undo_the_processors_patchify():
    video_processor = build_processor().video_processor
    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)
    out = video_processor(videos=[frames], return_tensors="pt")
    got = cell_frames(
        out["pixel_values_videos"],
        out["video_grid_thw"],
        0,
        video_processor.image_mean,
        video_processor.image_std,
    )
    # The first frame of each temporal cell (frames 0 and 2), back to uint8 within rounding.
    assert got.shape == (2, 56, 84, 3)
    assert np.abs(got.astype(int) - frames[::2].astype(int)).max() <= 1


class _LoggingBoringModel(BoringModel):
    """Lightning's demo model, logging its loss under our training key."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train/loss", out["loss"])
        return out


class _BarProbe(Callback):
    def __init__(self, bar: StepProgressBar) -> None:
        self.bar = bar
        self.totals: list[int | float] = []
        self.items: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.totals.append(self.bar.total_train_batches)

    def on_train_end(self, trainer, pl_module):
        self.items = self.bar.get_metrics(trainer, pl_module)


def test_progress_bar_total_is_max_steps_and_it_shows_the_loss(tmp_path: Path):
    bar = StepProgressBar()
    probe = _BarProbe(bar)
    trainer = L.Trainer(
        max_steps=5,
        max_epochs=1,
        callbacks=[bar, probe],
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        log_every_n_steps=1,
        accelerator="cpu",
    )
    trainer.fit(_LoggingBoringModel())
    assert trainer.num_training_batches == 64
    assert set(probe.totals) == {5}
    assert "loss" in probe.items and "v_num" not in probe.items
