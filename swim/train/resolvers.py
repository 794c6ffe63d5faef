"""OmegaConf resolvers used by the configs: W&B group and run names derived from Hydra's run.

- ``${swim.sweep_group:}``: the multirun sweep dir's name (e.g. ``2026-01-31_12-00-00``) in a
  multirun, so all jobs of one sweep share a W&B group; ``null`` in a single run.
- ``${swim.run_name:}``: in a multirun ``<job num>-<overrides>`` (e.g. ``1-loss.mask_weight=0.5``),
  in a single run the run dir's name.

- ``${swim.reference_prompt:}``: the reference implementation's system prompt
  (:data:`swim.data.config.REFERENCE_SYSTEM_PROMPT`), for ``experiment=swim_7b_reference``.

The first two read ``HydraConfig`` and therefore only resolve inside a Hydra app (or after
``HydraConfig().set_config(cfg)`` in tests).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from swim.data.config import REFERENCE_SYSTEM_PROMPT


def sweep_group() -> str | None:
    """Name of the multirun sweep dir, or ``None`` outside a multirun."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.sweep.dir).name


def run_name() -> str:
    """A readable run name: the job's number and overrides in a multirun, the run dir's name otherwise."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        overrides = hydra_cfg.job.override_dirname
        return f"{hydra_cfg.job.num}-{overrides}" if overrides else str(hydra_cfg.job.num)
    return Path(hydra_cfg.runtime.output_dir).name


def register_resolvers() -> None:
    """Register the resolvers once per process (idempotent)."""
    resolvers = (
        ("swim.sweep_group", sweep_group),
        ("swim.run_name", run_name),
        ("swim.reference_prompt", lambda: REFERENCE_SYSTEM_PROMPT),
    )
    for name, fn in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
