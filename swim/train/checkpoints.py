"""Resuming and pre-emption: where ``ckpt_path=last`` points, and a checkpoint on SIGTERM / SIGUSR1.

Pre-emption, three ways a job can be told to stop:

- SIGTERM anywhere: Lightning's signal connector sets ``trainer.received_sigterm`` and raises
  ``SIGTERMException`` after the current batch. :class:`PreemptionCheckpoint` saves ``last.ckpt``
  at that batch's end first (or in ``on_exception`` if the signal came during validation).
- SIGUSR1 / SIGUSR2 (configurable) outside a scheduler: the callback saves ``last.ckpt`` after the
  current batch and stops training; ``train.py`` then skips validation and exits.
- On SLURM: Lightning's ``SLURMEnvironment`` (auto-requeue on SIGUSR1) saves its own HPC checkpoint
  and requeues; submitit's launcher requeues on SIGUSR2. The callback installs its handlers after
  theirs (``on_train_start``, after Lightning registers its own) and *chains* to them: it saves
  ``last.ckpt`` first, then calls the previous handler, which requeues. A requeued job with
  ``ckpt_path=last`` resumes from its run dir's ``last.ckpt``.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as L
from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
LAST_NAME = "last.ckpt"


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """The checkpoint to resume from.

    Args:
        ckpt_path: ``None`` (train from scratch); ``last`` (this run dir's
            ``checkpoints/last.ckpt`` if it exists, else from scratch: the first start of a job that a
            scheduler may requeue); a run dir or checkpoint dir (its ``last.ckpt``); or a checkpoint
            path (a file, or a DeepSpeed checkpoint dir named ``*.ckpt``).
        output_dir: the current run dir.

    Raises:
        FileNotFoundError: an explicit path or dir without a ``last.ckpt``.
    """
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        candidate = Path(output_dir) / CHECKPOINT_SUBDIR / LAST_NAME
        if candidate.exists():
            log.info("Resuming from %s", candidate)
            return str(candidate)
        log.warning(
            "ckpt_path=last: there is no %s, so this run STARTS FROM SCRATCH. That is right for the "
            "first start of a job a scheduler may requeue; to resume an earlier run, pass "
            "ckpt_path=<its run dir> or hydra.run.dir=<its run dir>",
            candidate,
        )
        return None
    path = Path(ckpt_path)
    if path.suffix == ".ckpt" and path.exists():
        return str(path)
    if path.is_dir():
        for candidate in (path / CHECKPOINT_SUBDIR / LAST_NAME, path / LAST_NAME):
            if candidate.exists():
                log.info("Resuming from %s", candidate)
                return str(candidate)
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r}: no {CHECKPOINT_SUBDIR}/{LAST_NAME} or {LAST_NAME} in that directory"
        )
    raise FileNotFoundError(
        f"ckpt_path={ckpt_path!r}: expected 'last', a run/checkpoint directory or an existing .ckpt path"
    )


class PreemptionCheckpoint(Callback):
    """Save ``<dirpath>/last.ckpt`` when the job is asked to stop, then stop (or chain to a requeue).

    Args:
        dirpath: where ``last.ckpt`` goes (the same folder as the ``ModelCheckpoint`` callbacks).
        signals: signal names handled besides SIGTERM (which Lightning handles), e.g.
            ``["SIGUSR1", "SIGUSR2"]``.
    """

    def __init__(self, dirpath: str | Path, signals: tuple[str, ...] | list[str] = ("SIGUSR1",)) -> None:
        self.dirpath = Path(dirpath)
        self.signals = [signal.Signals[name] for name in signals]
        self.requested: signal.Signals | None = None
        self.saved_path: Path | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def stopped(self) -> bool:
        """Whether training was stopped by a signal (``train.py`` then skips validation)."""
        return self.saved_path is not None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum)
        log.warning("Received %s: saving %s after the current batch", self.requested.name, LAST_NAME)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.saved_path is not None:
            return
        if trainer.received_sigterm:
            self._save(trainer, "SIGTERM")
        elif self.requested is not None:
            signum = self.requested
            previous = self._previous.get(signum)
            self._save(trainer, signum.name)
            trainer.should_stop = True
            if callable(previous):
                log.info(
                    "Passing %s on to the handler that was installed before (scheduler requeue)", signum.name
                )
                previous(signum, None)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException) and self.saved_path is None:
            self._save(trainer, "SIGTERM")

    def _save(self, trainer: L.Trainer, reason: str) -> None:
        path = self.dirpath / LAST_NAME
        trainer.save_checkpoint(path)
        self.saved_path = path
        log.warning("%s: saved %s at global step %d", reason, path, trainer.global_step)


class ScheduleLengthCheck(Callback):
    """Warn when a run resumes with another ``max_steps`` (or epoch length) than it was saved with.

    The learning-rate schedule is sized to ``trainer.estimated_stepping_batches`` when the run
    starts; a resumed run with a changed ``max_steps`` gets a schedule of another length, restored
    at the saved step (a cosine schedule shrunk below the saved step runs at lr 0). The saved
    value lives in the checkpoint as this callback's state.
    """

    def __init__(self) -> None:
        self.saved: dict[str, int] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, int]:
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return {}
        return {"max_steps": int(trainer.max_steps), "max_epochs": int(trainer.max_epochs or -1)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.saved = dict(state_dict)
        trainer = getattr(self, "_trainer", None)
        if trainer is None or not state_dict:
            return
        now = {"max_steps": int(trainer.max_steps), "max_epochs": int(trainer.max_epochs or -1)}
        changed = {
            key: (state_dict[key], now[key])
            for key in now
            if key in state_dict and state_dict[key] != now[key]
        }
        if changed:
            described = ", ".join(f"trainer.{key} {old} -> {new}" for key, (old, new) in changed.items())
            log.warning(
                "Resuming with %s: the learning-rate schedule was sized to the old run length and is now "
                "rebuilt for the new one at the saved step (a cosine schedule may jump, or sit at lr 0 past "
                "its end). Resume with the original values to continue the same schedule.",
                described,
            )


class RestoreLoaderPosition(Callback):
    """Make a resumed run continue at the checkpoint's data position (works around Lightning #20550).

    Lightning saves the train dataloader's ``state_dict`` (our ``ResumableDataLoader``: epoch and
    batches handed out) and should load it back on resume. But when ``configure_optimizers`` reads
    ``trainer.estimated_stepping_batches`` (the module's cosine schedule does), the loader is built
    before the checkpoint is restored, and Lightning 2.6 never loads the saved state: the resumed
    epoch would restart at its first batch. At ``on_train_start`` (restored, no batch fetched yet)
    this callback loads the pending state; it does nothing once Lightning has loaded it itself.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit_loop = trainer.fit_loop
        if fit_loop._combined_loader_states_to_load:
            log.info(
                "Restoring the train dataloader's position: %s", fit_loop._combined_loader_states_to_load
            )
            fit_loop._load_combined_loader_states()
