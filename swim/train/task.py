"""The task wrapper of ``train.py``: failures logged with the run dir, W&B always finished.

Free of heavy imports (no torch, no Lightning) so that ``train.py --help`` and ``--cfg job`` stay
instant: ``train.py`` imports the rest inside the task.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig

log = logging.getLogger(__name__)

T = TypeVar("T")


def task_wrapper(task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Run a task so that a failure is logged with its run dir and W&B is always finished.

    ``wandb.finish()`` in ``finally`` matters for multiruns: a job that fails with an open W&B run
    would otherwise leave the run attached to the process and the next job would log into it.
    A ``SystemExit`` (Lightning's ``SIGTERMException`` after a pre-emption checkpoint, a scheduler's
    requeue) is logged as a stop, not as a failure.
    """

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> T:
        exit_code = 0
        try:
            return task(cfg)
        except SystemExit as stop:
            log.warning("Stopped (%s); outputs so far are in %s", type(stop).__name__, cfg.paths.output_dir)
            raise
        except BaseException:
            exit_code = 1
            log.exception("Task failed; its outputs so far are in %s", cfg.paths.output_dir)
            raise
        finally:
            if "wandb" in sys.modules:
                import wandb

                if wandb.run is not None:
                    log.info("Closing the W&B run %s (exit code %d)", wandb.run.id, exit_code)
                    wandb.finish(exit_code=exit_code)

    return wrapped
