"""Fail fast: every path a run needs is checked before the model, callbacks or W&B run are built.

:func:`check_train_config` and :func:`check_eval_config` collect *all* problems of a composed
config (missing annotation files and video roots of every source, a missing checkpoint or input
video, a pretrained backbone without weights, naming the environment variable its path defaults
to) and raise one :class:`ConfigError` that lists them, one per line. Free of heavy imports.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from swim.data.sources import source_configs

ENV_REFERENCE = re.compile(r"oc\.env:\s*([A-Za-z_][A-Za-z0-9_]*)")


class ConfigError(ValueError):
    """A composed config that cannot run (missing files, unset weights); the message lists every problem."""


def source_problems(sources: Any, where: str, skip_under: str | None = None) -> list[str]:
    """Missing ``path`` and ``video_root`` of each source of a split, labelled ``where.<name>``.

    Args:
        sources: the split's sources, a mapping keyed by name or a list
            (:func:`swim.data.sources.source_configs`); ``optional: true`` sources are not checked
            (the mixture leaves a missing one out with a warning).
        where: the config key of the sources, e.g. ``data.train.sources``.
        skip_under: sources whose path lies under this folder are not checked (a demo that is
            generated on first use).
    """
    if isinstance(sources, DictConfig | ListConfig):
        sources = OmegaConf.to_container(sources, resolve=True)
    problems = []
    for source in source_configs(sources):
        label = f"{where}.{source.name}"
        path = source.path
        if source.optional:
            continue
        if skip_under and path and Path(path).resolve().is_relative_to(Path(skip_under).resolve()):
            continue
        if not path:
            problems.append(f"{label}.path is not set")
        elif not Path(path).exists():
            problems.append(f"{label}.path: no such file {path}")
        root = source.video_root
        if root and not Path(root).is_dir():
            problems.append(f"{label}.video_root: no such folder {root}")
    return problems


def backbone_problem(model_cfg: DictConfig) -> str | None:
    """Why ``model.backbone`` cannot load, or ``None``: a ``pretrained`` kind needs a local folder."""
    backbone = model_cfg.get("backbone")
    if backbone is None or backbone.get("kind") != "pretrained":
        return None
    path = backbone.get("path")
    if path and Path(path).is_dir():
        return None
    raw = str(OmegaConf.to_container(backbone, resolve=False).get("path"))
    env = ENV_REFERENCE.search(raw)
    hint = (
        f"export {env.group(1)}=/path/to/the/weights or pass model.backbone.path=..."
        if env
        else ("pass model.backbone.path=...")
    )
    if not path:
        unset = f" (it defaults to ${env.group(1)}, which is not set)" if env else ""
        return f"model.backbone.path is not set{unset}: {hint}; swim never downloads weights"
    return f"model.backbone.path: no such folder {path}: {hint}; swim never downloads weights"


def raise_if_any(problems: list[str], what: str) -> None:
    """Raise one :class:`ConfigError` listing ``problems`` (nothing when there are none)."""
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"{what}: {len(problems)} problem(s), nothing was built:\n{listed}")


def check_train_config(cfg: DictConfig) -> None:
    """Check the data sources of every split and the backbone of a ``train.py`` config.

    Raises:
        ConfigError: listing every missing path and an unusable backbone.
    """
    problems = []
    for split in ("train", "val", "bench"):
        node = cfg.data.get(split)
        if node is not None:
            problems += source_problems(node.get("sources"), f"data.{split}.sources")
    backbone = backbone_problem(cfg.model)
    if backbone:
        problems.append(backbone)
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "last") and not Path(str(ckpt)).exists():
        problems.append(f"ckpt_path: no such file or run dir {ckpt}")
    raise_if_any(problems, "train.py cannot start")


def check_eval_config(cfg: DictConfig) -> None:
    """Check the task's sources, ``ckpt``, ``input.video`` and (without ``ckpt``) the backbone.

    Sources under ``demo.dir`` are skipped when ``demo.ensure`` generates the demo on first use.

    Raises:
        ConfigError: listing every problem.
    """
    demo = cfg.get("demo") or {}
    skip = demo.get("dir") if demo.get("ensure") else None
    problems = source_problems(cfg.task.get("sources"), "task.sources", skip_under=skip)
    ckpt = cfg.get("ckpt")
    if ckpt is not None and not Path(str(ckpt)).exists():
        problems.append(f"ckpt: no such checkpoint file or folder {ckpt}")
    if ckpt is None:
        backbone = backbone_problem(cfg.model)
        if backbone:
            problems.append(backbone)
    video = (cfg.get("input") or {}).get("video")
    if cfg.task.get("name") == "predict" and video is not None and not Path(str(video)).exists():
        problems.append(f"input.video: no such file or frame folder {video}")
    raise_if_any(problems, "evaluate.py cannot start")
