"""Helpers of the training tests: composed configs, train.py subprocesses, a reader of W&B offline run
files, and test-only callbacks (a loss recorder, a signal sent to itself at a chosen step, a failure).
The session fixtures (the small demo, the records cache) are in conftest.py."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TESTS = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WANDB_BLOCK = 32768

# Small and fast: no dataloader workers, two optimizer steps, one validation batch.
FAST = [
    "trainer=cpu",
    "data.num_workers=0",
    "data.batch_size=2",
    "trainer.max_steps=2",
    "trainer.limit_val_batches=1",
    "trainer.val_check_interval=1.0",
    "trainer.log_every_n_steps=1",
    "model.scheduler.name=constant",
]


def demo_overrides(demo_root: Path, cache_dir: Path) -> list[str]:
    """Overrides pointing ``data=demo`` at an already generated demo in ``demo_root``.

    ``data.demo_dir=null`` keeps ``ensure_demo`` (which would regenerate the default-size demo) out of
    the run; every source's path and video root are redirected instead.
    """
    root = OmegaConf.create({"paths": {"cache_dir": ""}, "seed": 0})
    root.data = OmegaConf.load(CONF / "data" / "demo.yaml")
    root.data.demo_dir = str(demo_root)
    data = OmegaConf.to_container(root.data, resolve=True)
    overrides = ["data.demo_dir=null", f"paths.cache_dir={cache_dir}"]
    for split in ("train", "val", "bench"):
        for key, source in data[split]["sources"].items():
            name = Path(source["path"]).name
            overrides.append(f"data.{split}.sources.{key}.path={demo_root / 'annotations' / name}")
            overrides.append(f"data.{split}.sources.{key}.video_root={demo_root}")
    return overrides


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """``conf/train.yaml`` composed as ``hydra.main`` gives it to ``train``, outputs in ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir.parent)
        del cfg["hydra"]
    return cfg


def run_train_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a ``train.py`` child: the tests dir importable (for the test callbacks), one
    thread, offline W&B."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "HYDRA_FULL_ERROR": "1",
        **(extra or {}),
    }


def run_train_py(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``python train.py ARGS`` in the repo and wait for it."""
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=run_train_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        tail = result.stderr[-6000:]
        raise AssertionError(f"train.py {' '.join(args)} failed ({result.returncode}):\n{tail}")
    return result


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


class LossRecorder(L.Callback):
    """Appends ``{"step", "loss", "ids"}`` (ids: the batch's samples) per optimizer step to a JSONL file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with self.path.open("a") as handle:
            ids = list(getattr(batch, "sample_ids", []))
            handle.write(json.dumps({"step": trainer.global_step, "loss": float(loss), "ids": ids}) + "\n")


def read_losses(path: Path) -> dict[int, float]:
    return {item["step"]: item["loss"] for item in map(json.loads, path.read_text().splitlines())}


class SignalAtStep(L.Callback):
    """Sends this process a signal when a batch starts after ``step`` optimizer steps (a pre-emption)."""

    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step = step
        self.signum = signal.Signals[signal_name]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class RaiseAtStep(L.Callback):
    """Fails the run when a batch starts after ``step`` optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"test failure at step {self.step}")


@dataclass
class WandbRun:
    """What an offline W&B run file holds: run metadata, logged keys, config keys, exit code."""

    run_id: str
    group: str
    name: str
    tags: list[str]
    history_keys: set[str] = field(default_factory=set)
    config_keys: set[str] = field(default_factory=set)
    exit_code: int | None = None


def _wandb_chunks(data: bytes) -> Iterator[bytes]:
    """Records of a ``.wandb`` file (W&B's LevelDB-style log).

    A 7-byte file header, then 32 KiB blocks of chunks, each with a 7-byte header (crc32c, length,
    type: 1 full, 2 first, 3 middle, 4 last); a block tail shorter than 7 bytes is padding.
    """
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def read_wandb_run(run_dir: Path, timeout: float = 60.0) -> WandbRun:
    """Parse the ``run-*.wandb`` file of an offline run dir (``wandb/offline-run-*``).

    ``wandb.finish()`` can return before wandb-core's writer has flushed a small file (it buffers
    32 KiB blocks), so the file is read again until it holds its exit record, for up to ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        run = _parse_wandb_run(run_dir)
        if (run is not None and run.exit_code is not None) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert run is not None, f"{run_dir} has no run record"
    return run


def _parse_wandb_run(run_dir: Path) -> WandbRun | None:
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    run: WandbRun | None = None
    history: set[str] = set()
    config: set[str] = set()
    exit_code = None
    for chunk in _wandb_chunks(path.read_bytes()):
        record = pb.Record()
        try:
            record.ParseFromString(chunk)
        except DecodeError:  # a chunk still being written
            return None
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info = record.run
            run = WandbRun(info.run_id, info.run_group, info.display_name, list(info.tags))
        elif kind == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "config":
            config |= {item.key or "/".join(item.nested_key) for item in record.config.update}
        elif kind == "exit":
            exit_code = record.exit.exit_code
    if run is not None:
        run.history_keys, run.config_keys, run.exit_code = history, config, exit_code
    return run
