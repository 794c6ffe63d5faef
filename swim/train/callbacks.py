"""Lightning callbacks of the training run: attention heatmaps and the run's config/parameter log.

Pre-emption lives in :mod:`swim.train.checkpoints`, metrics.json in :mod:`swim.train.report`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from rich.console import Console
from rich.table import Table
from transformers import PreTrainedTokenizerBase

from swim.metrics.grounding import grounding_scores
from swim.model.maps import SampleHeatmaps
from swim.train.heatmaps import HeatmapRow, render_rows
from swim.train.utils import count_parameters

log = logging.getLogger(__name__)


def heatmap_rows(
    val_maps: Sequence[SampleHeatmaps], max_rows: int, tokenizer: PreTrainedTokenizerBase | None = None
) -> list[HeatmapRow]:
    """Rows to draw from the module's ``last_val_maps``: the first row of each tagged phrase.

    The title names the whole tagged phrase (all its rows' tokens) and the drawn row's token; each
    cell with ground truth gets the drawn map's pointing-game score.

    Args:
        val_maps: the module's snapshot of the last validation's fused maps, per sample.
        max_rows: how many rows to keep, in sample order (the module keeps a fixed set of samples).
        tokenizer: decodes the tagged tokens for the title when given.
    """

    def text(token_ids: list[int]) -> str:
        return tokenizer.decode(token_ids).strip() if tokenizer is not None else f"ids {token_ids}"

    rows: list[HeatmapRow] = []
    for sample in val_maps:
        phrases: dict[int, list[int]] = {}
        for row in sample.rows:
            phrases.setdefault(row.phrase, []).append(row.token_id)
        seen_phrases: set[int] = set()
        for row in sample.rows:
            if row.phrase in seen_phrases:
                continue
            seen_phrases.add(row.phrase)
            title = (
                f"{sample.sample_id} | phrase {row.phrase} {text(phrases[row.phrase])!r} | "
                f"row of token {text([row.token_id])!r} @ {row.token_position}"
            )
            rows.append(
                HeatmapRow(
                    title=title,
                    attention=row.fused,
                    mask=row.cell_masks,
                    valid=row.cell_valid,
                    frames=sample.frames,
                    scores=_pointing(row.fused, row.cell_masks, row.cell_valid),
                )
            )
            if len(rows) == max_rows:
                return rows
    return rows


def _pointing(fused: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> list[float | None]:
    """Per cell, the pointing-game score of ``fused (T, h, w)`` against ``masks (T, h', w')``."""
    scores = grounding_scores(fused.float(), masks.float(), topk=(1,))["pointing_game"]
    return [
        float(s) if bool(v) and math.isfinite(float(s)) else None for s, v in zip(scores, valid, strict=True)
    ]


class AttentionHeatmaps(Callback):
    """Every ``every_n_val`` validations, draw the fused attention of a fixed set of rows next to the GT.

    The panel goes to every W&B logger as ``val/attention_heatmaps`` (a ``wandb.Image``), to every
    TensorBoard logger under the same tag, and, when
    ``save_dir`` is set, to ``<save_dir>/step_<global_step>.png``.

    Args:
        every_n_val: draw on every n-th validation run (sanity checks excluded).
        max_rows: rows (tagged-token queries) per panel.
        tile_px: size of one temporal cell's tile.
        save_dir: folder for PNG copies, or ``None``.
    """

    KEY = "val/attention_heatmaps"

    def __init__(
        self, every_n_val: int = 1, max_rows: int = 4, tile_px: int = 84, save_dir: str | Path | None = None
    ) -> None:
        if every_n_val < 1:
            raise ValueError(f"callbacks.attention_heatmaps.every_n_val={every_n_val}: expected >= 1")
        self.every_n_val = every_n_val
        self.max_rows = max_rows
        self.tile_px = tile_px
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.num_validations = 0
        self.saved: list[Path] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.num_validations += 1
        if (self.num_validations - 1) % self.every_n_val:
            return
        val_maps = getattr(pl_module, "last_val_maps", None)
        if not val_maps:
            log.info("No attention maps from the last validation (no supervised rows); no heatmap panel")
            return
        tokenizer = getattr(getattr(pl_module, "processor", None), "tokenizer", None)
        rows = heatmap_rows(val_maps, self.max_rows, tokenizer)
        if not rows:
            log.info("The last validation's attention maps hold no rows; no heatmap panel")
            return
        panel = render_rows(rows, tile_px=self.tile_px)
        caption = (
            f"step {trainer.global_step}: attention (top, pointing-game score per cell) vs ground truth "
            "(bottom) per temporal cell"
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=self.KEY, images=[panel], caption=[caption], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(
                    self.KEY, np.asarray(panel), trainer.global_step, dataformats="HWC"
                )
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            path = self.save_dir / f"step_{trainer.global_step:07d}.png"
            panel.save(path)
            self.saved.append(path)


class LastValidationStep(Callback):
    """Remembers the global step of the last validation run during fit (``None``: none ran).

    ``train.py`` skips its post-fit ``validate`` when the fit's last validation ran at the final
    step: it would repeat the same numbers and log everything twice.
    """

    def __init__(self) -> None:
        self.step: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.step = trainer.global_step


class RunInfoLogger(Callback):
    """At the start of training, log the resolved config and the parameter counts to every logger.

    Runs at ``on_train_start`` rather than before ``fit`` because the module may build its model in
    ``configure_model`` (DeepSpeed ZeRO-3), so parameters exist only then.

    Args:
        config: the resolved config with secrets already removed (:func:`swim.train.utils.loggable_config`).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.parameter_counts: dict[str, int] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counter = getattr(pl_module, "parameter_counts", None)
        self.parameter_counts = dict(counter()) if callable(counter) else count_parameters(pl_module)
        log.info(
            "Training starts at step %d: %s parameters, %s trainable",
            trainer.global_step,
            f"{self.parameter_counts.get('total', 0):,}",
            f"{self.parameter_counts.get('trainable', 0):,}",
        )
        hparams = {**self.config, "params": self.parameter_counts}
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)
        if trainer.is_global_zero:
            table = Table(title="Parameters")
            table.add_column("kind")
            table.add_column("count", justify="right")
            for kind, count in self.parameter_counts.items():
                table.add_row(kind, f"{count:,}")
            Console(stderr=True).print(table)
