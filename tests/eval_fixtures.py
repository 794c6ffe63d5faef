"""Test helpers for evaluation: a small demo, the eval config, and the local stub judge.

The stub (``swim.eval.judge_stub``) answers ``POST /v1/chat/completions`` like an OpenAI-compatible
endpoint, with deterministic scores and queued faults; the real ``openai`` client speaks HTTP to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from swim.data.demo import generate_demo
from swim.eval.judge_stub import StubServer, stub_scores

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


expected_scores = stub_scores
"""The scores the stub judge gives a prediction."""


@contextmanager
def judge_server() -> Iterator[StubServer]:
    """The stub judge (``swim.eval.judge_stub``) on a free port of 127.0.0.1, for the real client."""
    with StubServer() as server:
        yield server


def make_demo(root: Path) -> Path:
    """A small demo dataset (2 bench videos: 10 Bench-Q questions and 2 Bench-D records per form)."""
    generate_demo(root, seed=0, num_train=1, num_val=2, num_bench=2, num_images=1, progress=False)
    return root


def compose_eval(demo: Path, cache: Path, *overrides: str) -> DictConfig:
    """``conf/eval.yaml`` composed as ``evaluate.py`` would, on the small demo, with ``overrides``."""
    defaults = [f"demo.dir={demo}", "demo.ensure=false", f"paths.cache_dir={cache}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="eval", overrides=[*defaults, *overrides])
