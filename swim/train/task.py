"""The task wrapper of ``train.py``: failures logged with the run dir, W&B always finished.

A :class:`~swim.train.preflight.ConfigError` (missing data, unset weights) is printed as its message
alone and exits with status 2: no traceback for a mistake in the command line. Any other failure is
logged in one line on the console (Hydra prints its traceback once) and with the traceback in the
run's log file.

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

from swim.train.preflight import ConfigError

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
        except ConfigError as err:
            exit_code = 2
            log.error("%s", err)
            raise SystemExit(exit_code) from None
        except BaseException as err:
            exit_code = 1
            log.error(
                "Task failed (%s: %s); its outputs so far are in %s",
                type(err).__name__,
                err,
                cfg.paths.output_dir,
            )
            _traceback_to_log_files(log)
            raise
        finally:
            if "wandb" in sys.modules:
                import wandb

                if wandb.run is not None:
                    log.info("Closing the W&B run %s (exit code %d)", wandb.run.id, exit_code)
                    wandb.finish(exit_code=exit_code)

    return wrapped


def _traceback_to_log_files(logger: logging.Logger) -> None:
    """Write the exception being handled, with its traceback, to the root logger's file handlers only."""
    record = logger.makeRecord(
        logger.name, logging.ERROR, __file__, 0, "Traceback of the failure", (), sys.exc_info()
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
