"""Pre-emption and resuming: a signal saves last.ckpt after the current batch; `ckpt_path` resumes
mid-epoch at the next unseen batch, and the resumed run repeats the uninterrupted run's losses."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_fixtures import (
    FAST,
    REPO,
    compose_train,
    demo_overrides,
    read_losses,
    read_metrics,
    read_wandb_run,
    run_train_env,
)

from swim.train.history import HISTORY_FILE, append_overrides
from swim.train.wandb_run import read_run_id

STEPS = 6  # the small demo's train split is 15 samples: 8 batches of 2, so step 6 is mid-epoch


def train_in_process(overrides: list[str], run_dir: Path) -> dict:
    from train import train

    return train(compose_train(overrides, run_dir))


def base_overrides(demo: Path, cache: Path, losses: Path) -> list[str]:
    return [
        *FAST,
        *demo_overrides(demo, cache),
        f"trainer.max_steps={STEPS}",
        "trainer.limit_val_batches=0",
        "validate=false",
        "logger=csv",
        "+callbacks.losses._target_=train_fixtures.LossRecorder",
        f"+callbacks.losses.path={losses}",
    ]


@pytest.mark.slow
def test_resumed_run_repeats_the_uninterrupted_losses(train_demo: Path, records_cache: Path, tmp_path: Path):
    full = tmp_path / "full.jsonl"
    train_in_process(base_overrides(train_demo, records_cache, full), tmp_path / "full")

    # Pre-empted: SIGTERM arrives while batch 3 runs; last.ckpt is saved after it, then the run stops.
    first = tmp_path / "first.jsonl"
    stop = ["+callbacks.stop._target_=train_fixtures.SignalAtStep", "+callbacks.stop.step=2"]
    with pytest.raises(SystemExit):
        train_in_process([*base_overrides(train_demo, records_cache, first), *stop], tmp_path / "first")
    report = read_metrics(tmp_path / "first")
    assert (report["status"], report["global_step"]) == ("stopped_by_signal", 3)
    checkpoint = torch.load(tmp_path / "first" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 3}]

    # Resumed from the pre-empted run's dir: the remaining steps, same data, same losses.
    rest = tmp_path / "rest.jsonl"
    resumed = [*base_overrides(train_demo, records_cache, rest), f"ckpt_path={tmp_path / 'first'}"]
    assert train_in_process(resumed, tmp_path / "rest")["global_step"] == STEPS

    expected = read_losses(full)
    assert sorted(expected) == list(range(1, STEPS + 1))
    got = {**read_losses(first), **read_losses(rest)}
    assert sorted(got) == sorted(expected)
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), f"step {step}"


def test_sigusr2_saves_stops_and_hands_over_to_the_previous_handler(
    train_demo: Path, records_cache: Path, tmp_path: Path
):
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        overrides = [
            *base_overrides(train_demo, records_cache, tmp_path / "losses.jsonl"),
            "validate=true",
            "+callbacks.stop._target_=train_fixtures.SignalAtStep",
            "+callbacks.stop.step=1",
            "+callbacks.stop.signal_name=SIGUSR2",
        ]
        report = train_in_process(overrides, tmp_path / "run")
    finally:
        signal.signal(signal.SIGUSR2, previous)
    # The scheduler's handler (here: the recorder) ran after the checkpoint; training stopped, no validation.
    assert calls == [signal.SIGUSR2]
    assert (report["status"], report["global_step"], report["validate"]) == ("stopped_by_signal", 2, {})
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2
    assert signal.getsignal(signal.SIGUSR2) is previous


def test_sigterm_to_a_training_child_process_saves_last_ckpt(
    train_demo: Path, records_cache: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    args = [
        *FAST,
        *demo_overrides(train_demo, records_cache),
        "trainer.max_steps=1000",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
    ]
    child = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=run_train_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log_file = run_dir / "train.log"
        deadline = time.monotonic() + 300
        while not (log_file.is_file() and "Training starts" in log_file.read_text()):
            assert child.poll() is None, f"train.py exited early:\n{child.stderr.read()[-4000:]}"
            assert time.monotonic() < deadline, "training did not start within 300 s"
            time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
    report = read_metrics(run_dir)
    assert report["status"] == "stopped_by_signal", stderr[-4000:]
    assert 1 <= report["global_step"] < 1000
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == report["global_step"]
    assert "SIGTERM: saved" in log_file.read_text()


def test_resume_in_the_run_dir_continues_the_wandb_run_and_warns_about_a_new_max_steps(
    train_demo: Path, records_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    run_dir = tmp_path / "run"
    common = [
        *FAST,
        *demo_overrides(train_demo, records_cache),
        "trainer.limit_val_batches=0",
        "validate=false",
        "logger=wandb",
        # A checkpoint saved at the end of a max_steps-shortened epoch counts that epoch as done.
        "trainer.max_epochs=-1",
        "ckpt_path=last",
    ]
    caplog.set_level(logging.INFO)
    train_in_process([*common, "trainer.max_steps=1"], run_dir)
    # The first start finds no checkpoint: a loud warning, not a quiet info line.
    assert any(
        r.levelno == logging.WARNING and "STARTS FROM SCRATCH" in r.getMessage() for r in caplog.records
    )
    run_id = read_run_id(run_dir)
    assert run_id
    caplog.clear()
    assert train_in_process([*common, "trainer.max_steps=2"], run_dir)["global_step"] == 2
    # Resumed with another max_steps: the schedule warning names both values.
    assert any(
        "trainer.max_steps 1 -> 2" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    )

    runs = [read_wandb_run(folder) for folder in sorted((run_dir / "wandb").glob("offline-run-*"))]
    assert [run.run_id for run in runs] == [run_id, run_id]


def test_every_start_of_a_run_dir_appends_its_overrides(tmp_path: Path):
    history = tmp_path / ".hydra" / HISTORY_FILE
    append_overrides(history, ["trainer.max_steps=1"])
    entries = append_overrides(history, ["trainer.max_steps=2", "ckpt_path=last"])
    assert [entry["overrides"] for entry in entries] == [
        ["trainer.max_steps=1"],
        ["trainer.max_steps=2", "ckpt_path=last"],
    ]
    assert yaml.safe_load(history.read_text()) == entries
