"""Small helpers that keep ``train.py`` a readable recipe.

Instantiation of callbacks, loggers and the strategy from their config groups, secret redaction
for logged configs, parameter counts, the demo data and the processor the datamodule needs before
the model exists. (The task wrapper is in :mod:`swim.train.task`, free of heavy imports.)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import hydra
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import Strategy
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

T = TypeVar("T")

# Config keys whose values are secrets wherever they appear (``api_key``, ``wandb_token``, ...).
SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password)", re.IGNORECASE)
# Environment variables whose values must never reach a log or a saved config.
SECRET_ENV_VARS = ("WANDB_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
REDACTED = "<redacted>"


def instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list[Callback]:
    """Lightning callbacks from the ``callbacks`` group (a mapping name -> config with ``_target_``).

    Entries set to ``null`` (e.g. ``callbacks.attention_heatmaps=null``) are skipped.
    """
    return _instantiate_each(callbacks_cfg, Callback, "callbacks")


def instantiate_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    """Lightning loggers from the ``logger`` group (a mapping name -> config with ``_target_``)."""
    return _instantiate_each(logger_cfg, Logger, "logger")


def _instantiate_each(group_cfg: DictConfig | None, kind: type[T], group: str) -> list[T]:
    if not group_cfg:
        return []
    if not isinstance(group_cfg, DictConfig):
        raise TypeError(
            f"config `{group}` must be a mapping of name -> config, got {type(group_cfg).__name__}"
        )
    objects = []
    for name, node in group_cfg.items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"config `{group}.{name}` needs a `_target_` naming a {kind.__name__} class")
        obj = hydra.utils.instantiate(node)
        if not isinstance(obj, kind):
            raise TypeError(
                f"config `{group}.{name}` built a {type(obj).__name__}, expected a {kind.__name__}"
            )
        log.info("Instantiated %s.%s: %s", group, name, type(obj).__name__)
        objects.append(obj)
    return objects


def instantiate_strategy(strategy_cfg: DictConfig, accelerator: str = "auto") -> Strategy | str:
    """The Lightning strategy of the ``strategy`` group (``auto`` gives the string ``"auto"``).

    A DeepSpeed strategy on ``accelerator="cpu"`` (``trainer=cpu``) is built as
    :class:`~swim.train.deepspeed_cpu.CPUDeepSpeedStrategy` with the same arguments, and DeepSpeed is
    told to use its CPU accelerator (``DS_ACCELERATOR=cpu``) before it is first imported.

    Args:
        strategy_cfg: the ``strategy`` config node.
        accelerator: the trainer's ``accelerator`` (``cpu``, ``gpu``, ``auto``, ...).

    Raises:
        RuntimeError: a DeepSpeed strategy was asked for but the ``deepspeed`` package is missing.
    """
    target = str(strategy_cfg.get("_target_", ""))
    if not target.endswith("DeepSpeedStrategy"):
        return hydra.utils.instantiate(strategy_cfg)
    on_cpu = accelerator == "cpu"
    if on_cpu:
        from swim.train.deepspeed_cpu import CPUDeepSpeedStrategy, use_deepspeed_cpu_accelerator

        use_deepspeed_cpu_accelerator()
        strategy_cfg = OmegaConf.merge(
            strategy_cfg, {"_target_": f"{CPUDeepSpeedStrategy.__module__}.{CPUDeepSpeedStrategy.__name__}"}
        )
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        hardware = "" if on_cpu else " and CUDA GPUs (or trainer=cpu)"
        raise RuntimeError(
            f"strategy {target} (stage {strategy_cfg.get('stage')}) needs the `deepspeed` package{hardware}; "
            "install it with `pip install -e '.[gpu]'` (or '.[dev]'), or use strategy=auto or strategy=ddp"
        ) from err
    return hydra.utils.instantiate(strategy_cfg)


def redact_secrets(value: Any) -> Any:
    """A copy of a plain config container with secrets replaced by ``<redacted>``.

    A value is a secret if its key looks like one (``api_key``, ``token``, ...) or if it contains
    the value of a secret environment variable (``WANDB_API_KEY``, ``OPENAI_API_KEY``, ...).
    """
    secrets = [os.environ[name] for name in SECRET_ENV_VARS if os.environ.get(name)]
    return _redact(value, secrets)


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            key: REDACTED if SECRET_KEY.search(str(key)) and value[key] else _redact(value[key], secrets)
            for key in value
        }
    if isinstance(value, list | tuple):
        return [_redact(item, secrets) for item in value]
    if isinstance(value, str) and any(secret in value for secret in secrets):
        return REDACTED
    return value


def loggable_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a plain dict, secrets removed: what goes to loggers and metrics.json."""
    return redact_secrets(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))


def count_parameters(module: torch.nn.Module) -> dict[str, int]:
    """Total, trainable and frozen parameter counts of a module.

    Parameters partitioned by DeepSpeed ZeRO-3 report their full size (``ds_numel``).
    """
    trainable = frozen = 0
    for param in module.parameters():
        numel = int(getattr(param, "ds_numel", param.numel()))
        if param.requires_grad:
            trainable += numel
        else:
            frozen += numel
    return {"total": trainable + frozen, "trainable": trainable, "frozen": frozen}


def ensure_demo_data(data_cfg: DictConfig, token_px: int = 28) -> Path | None:
    """Generate the synthetic demo dataset if the data config asks for it and it is missing.

    ``token_px`` is the model family's token side (its adapter's ``spec.token_px``): a demo for
    another side than 28 px lives in ``<demo_dir>_<token_px>px`` (:func:`swim.data.demo.demo_folder`),
    and ``data_cfg.demo_dir`` is pointed there, so the sources that interpolate it follow.

    A data config asks for the demo with ``demo_dir`` (``conf/data/demo.yaml``); real data configs
    have none. Generation shows a rich progress bar; a current demo is reused as is. (The
    datamodule's ``prepare_data`` makes the same call; here it happens before anything is built,
    so the first ``python train.py`` shows the progress first.)

    Returns:
        The demo manifest's path, or ``None`` when the data config needs no demo.
    """
    demo_dir = data_cfg.get("demo_dir")
    if not demo_dir:
        return None
    from swim.data.demo import demo_folder, ensure_demo

    data_cfg.demo_dir = demo_folder(demo_dir, token_px)
    manifest = ensure_demo(data_cfg.demo_dir, progress=True, token_px=token_px)
    log.info("Demo dataset: %s", manifest)
    return Path(manifest)
