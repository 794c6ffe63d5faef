"""Test-session settings and shared fixtures: offline W&B, full Hydra errors, one torch thread, and a
small generated demo dataset with its records cache (generated once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# W&B never talks to a server from the tests; Hydra prints the whole stack of a config error.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["HYDRA_FULL_ERROR"] = "1"
# DeepSpeed runs on CPU processes in the tests (tests/test_deepspeed.py), also on a machine with GPUs.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# The tests share two CPU cores with other work: one intra-op thread per process.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def train_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo dataset (8 train, 4 val, 2 bench scenes, 2 images); its root is the video root."""
    from swim.data.demo import generate_demo

    root = tmp_path_factory.mktemp("train_demo")
    generate_demo(root, seed=0, num_train=8, num_val=4, num_bench=2, num_images=2, progress=False)
    return root


@pytest.fixture(scope="session")
def records_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A records cache shared by the session's trainings (each mixture is validated once)."""
    return tmp_path_factory.mktemp("records_cache")


@pytest.fixture(scope="session")
def eval_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo of ``eval_fixtures.make_demo`` (2 bench videos), generated once per session."""
    from eval_fixtures import make_demo

    return make_demo(tmp_path_factory.mktemp("eval_demo"))


@pytest.fixture
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache dir (records and judge replies) for one evaluation test."""
    return tmp_path_factory.mktemp("eval_cache")
