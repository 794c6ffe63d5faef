"""What the console shows during a run: a progress bar that tells the truth, each log line once.

- :class:`StepProgressBar`: Lightning's rich bar whose total is the batches this epoch will really
  run (``trainer.max_steps`` included, not only the epoch's length) and which shows ``loss`` and
  ``attn_loss`` instead of W&B's version string.
- :func:`quiet_known_noise`: Lightning's own console handler removed (its records reach Hydra's
  console and ``train.log`` handlers through the root logger, so each line was printed twice), the
  litlogger advertisement dropped, and the deprecation warning that Lightning 2.6's ``_pytree``
  helper raises on every training step under torch 2.14 silenced. (W&B's "anonymous" warning is
  avoided where it comes from: :class:`swim.train.wandb_run.RunDirWandbLogger`.)
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import RichProgressBar

# Training metrics shown in the bar: bar label -> logged key.
BAR_METRICS = {"loss": "train/loss", "attn_loss": "train/attn_loss"}
# Lightning INFO lines that advertise a product rather than describe the run.
NOISE_MESSAGES = ("litlogger", "litmodels")


class StepProgressBar(RichProgressBar):
    """A rich progress bar sized by ``max_steps`` when it ends the epoch early, showing the losses."""

    @property
    def total_train_batches(self) -> int | float:
        """Batches of the current epoch, capped by the optimizer steps ``max_steps`` leaves."""
        total = super().total_train_batches
        trainer = self.trainer
        if trainer.max_steps is None or trainer.max_steps < 0:
            return total
        done_in_epoch = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        steps_left = max(trainer.max_steps - trainer.global_step, 0)
        return min(total, done_in_epoch + steps_left * trainer.accumulate_grad_batches)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The training losses of the last step; Lightning's ``v_num`` left out."""
        items = {
            key: value for key, value in super().get_metrics(trainer, pl_module).items() if key != "v_num"
        }
        for label, key in BAR_METRICS.items():
            value = trainer.callback_metrics.get(key)
            if value is not None and value.numel() == 1:
                items[label] = float(value)
        return items


class _DropMessages(logging.Filter):
    """Drops records whose message contains any of ``words``."""

    def __init__(self, words: tuple[str, ...]) -> None:
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(word in message for word in self.words)


def quiet_known_noise() -> None:
    """Print each Lightning line once and drop the known noise (module docs). Idempotent."""
    package_logger = logging.getLogger("lightning")
    for handler in list(package_logger.handlers):
        if type(handler) is logging.StreamHandler:
            package_logger.removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropMessages) for f in rank_zero.filters):
        rank_zero.addFilter(_DropMessages(NOISE_MESSAGES))
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
