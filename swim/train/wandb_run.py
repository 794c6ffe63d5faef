"""A W&B logger whose run id is kept in the run dir, so that a resumed run logs into the same W&B run.

Lightning's ``WandbLogger`` draws a new run id on every start: a run resumed with ``ckpt_path=last``
(or a run dir) became a second W&B run with the same name. :class:`RunDirWandbLogger` writes the
id to ``<save_dir>/wandb_run_id.txt`` on the first start and reads it back on the next ones;
W&B's ``resume="allow"`` then continues that run (offline: a new ``offline-run-*`` folder with the
same id, which ``wandb sync`` appends to the run). :func:`inherit_run_id` carries the id over when a
run resumes from a checkpoint of another run dir.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from swim.train.checkpoints import CHECKPOINT_SUBDIR

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id.txt"


def read_run_id(run_dir: str | Path) -> str | None:
    """The W&B run id kept in ``run_dir``, or ``None``."""
    path = Path(run_dir) / RUN_ID_FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def inherit_run_id(checkpoint: str | None, output_dir: str | Path) -> str | None:
    """Copy the W&B run id of the run dir ``checkpoint`` belongs to into ``output_dir``.

    Args:
        checkpoint: the resolved checkpoint to resume from (``<run dir>/checkpoints/*.ckpt``), or
            ``None`` (nothing to do).
        output_dir: the current run dir; an id already kept there wins.

    Returns:
        The id now kept in ``output_dir`` (``None`` if there is none yet).
    """
    target = Path(output_dir) / RUN_ID_FILE
    if checkpoint is None or target.is_file():
        return read_run_id(output_dir)
    folder = Path(checkpoint).parent
    source_dir = folder.parent if folder.name == CHECKPOINT_SUBDIR else folder
    if (source_dir / RUN_ID_FILE).is_file() and rank_zero_only.rank == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_dir / RUN_ID_FILE, target)
        log.info("Resuming the W&B run %s of %s", read_run_id(output_dir), source_dir)
    return read_run_id(output_dir)


class RunDirWandbLogger(WandbLogger):
    """``WandbLogger`` with the run id kept in ``save_dir`` (module docs).

    Args:
        save_dir: the run dir (W&B's files go to ``<save_dir>/wandb``).
        id: an explicit W&B run id; ``None`` uses the id kept in ``save_dir``, or a new one that is
            then kept there.
        anonymous: Lightning's argument, passed on only when set (W&B 0.2x warns about it otherwise).
        **kwargs: the other ``WandbLogger`` arguments.
    """

    def __init__(
        self, save_dir: str | Path, id: str | None = None, anonymous: bool | None = None, **kwargs: Any
    ) -> None:
        from wandb.sdk.lib.runid import generate_id

        run_id = id or read_run_id(save_dir)
        if run_id is None:
            run_id = generate_id()
            if rank_zero_only.rank == 0:
                Path(save_dir).mkdir(parents=True, exist_ok=True)
                (Path(save_dir) / RUN_ID_FILE).write_text(run_id + "\n")
        else:
            log.info("W&B run id %s (kept in %s)", run_id, Path(save_dir) / RUN_ID_FILE)
        super().__init__(save_dir=str(save_dir), id=run_id, anonymous=anonymous, **kwargs)
        if anonymous is None:
            self._wandb_init.pop("anonymous", None)
