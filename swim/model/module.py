"""The SWIM LightningModule: Qwen-VL fine-tuning (any model family) with attention supervision.

One step: the backbone's base model runs with the attention probe armed on the supervised rows;
the LM head runs only at positions whose next token is labelled; the loss is
``text_weight * CE + mask_weight * mask_loss`` (:mod:`swim.losses`).

Design choices, each forced by a distributed strategy:

- The model is built in :meth:`SwimModule.configure_model`, not ``__init__``: Lightning calls that
  hook inside DeepSpeed's ``zero.Init`` (ZeRO-3) and FSDP's init context, so a 7B model is
  partitioned as it is created instead of being materialised whole on every rank. The hook is
  idempotent, and ``load_from_checkpoint`` calls it before loading the state dict.
- Every rank runs the vision tower equally often every step. ZeRO-3 gathers a module's parameters
  with collectives in its forward hooks; a rank whose batch has fewer visual inputs (none, or no
  images while another rank has some) would skip the tower's gathers while the others wait in them
  (a hang). Such a batch runs the tower on a 1x2x2-patch dummy video right after the token
  embedding, as often as it falls short, and adds ``0 * output.sum()`` to the loss
  (:mod:`swim.model.tower`).
- A non-finite loss skips the step (counted as ``train/nonfinite_skips``). On one process without
  DeepSpeed, ``training_step`` returns ``None``: Lightning 2.6 then skips backward, and the
  optimiser step that follows finds no gradient from this batch (``torch.optim.AdamW`` leaves
  parameters without ``.grad`` untouched). Lightning raises on ``None`` under DeepSpeed and in any
  run with more than one process (every rank must run backward for the gradient collectives), so
  there all ranks agree to skip (``reduce_boolean_decision``) and return a zero-weighted loss made
  of the finite loss terms: backward runs everywhere and adds exactly zero. If the CE itself is
  non-finite, its gradients may be too; without DeepSpeed the module then drops all gradients of
  that optimiser step (``on_before_optimizer_step``); under DeepSpeed the gradients live in its
  partitioned buffers, out of the module's reach, and DeepSpeed's own overflow handling decides.
  More than ``max_nonfinite_in_a_row`` skips in a row stop training with an error.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric

from swim.data.batch import SwimBatch
from swim.losses import attention_mask_loss, composite_loss
from swim.metrics.grounding import GroundingMetrics, update_from_maps
from swim.model.backbone import BackboneConfig, build_backbone, load_processor
from swim.model.lora import (
    Adapters,
    add_adapters,
    check_peft_compatible,
    peft_settings,
    quantized_backbone,
    settings_dict,
)
from swim.model.maps import SampleHeatmaps, sample_frames, sample_heatmaps
from swim.model.optim import (
    FREEZE_MODES,
    OptimizerConfig,
    SchedulerConfig,
    apply_freeze,
    build_optimizer,
    build_scheduler,
    parameter_counts,
)
from swim.model.probe import AttentionProbe, probe_request
from swim.model.step import StepOutput, labelled_cross_entropy, skipped_records, zero_weighted_loss
from swim.model.structured import loss_config, to_dataclass
from swim.model.tower import balanced_tower_passes

log = logging.getLogger(__name__)


class SwimModule(LightningModule):
    """A Qwen-VL backbone (``model.backbone.family``) + attention probe + SWIM loss.

    Args:
        backbone: :class:`~swim.model.backbone.BackboneConfig` fields (``conf/model/*.yaml``).
        loss: :class:`~swim.losses.LossConfig` fields (``conf/loss/*.yaml``).
        supervised_layers: the backbone's default supervised layers; the probe captures
            ``loss.layers`` when set, else these (so a text-only run still measures grounding).
        optimizer: :class:`~swim.model.optim.OptimizerConfig` fields.
        scheduler: :class:`~swim.model.optim.SchedulerConfig` fields.
        freeze: ``tower_and_merger`` (the reference), ``tower`` or ``none``.
        peft: ``None`` (full fine-tuning), a preset name (``lora``, ``qlora``) or a mapping of
            :class:`~swim.model.lora.PeftSettings` fields; with adapters only they (and
            ``modules_to_save``) train, so ``freeze`` must stay ``tower_and_merger``.
        gradient_checkpointing: non-reentrant activation checkpointing of the decoder layers.
        heatmap_samples: how many validation samples :attr:`last_val_maps` keeps.
        max_nonfinite_in_a_row: training stops with an error after more consecutive skips.

    Logs (training values are per step and this rank's, never synchronised, so ranks may log
    different keys without a collective mismatch): ``train/loss``, ``train/text_loss``,
    ``train/label_tokens``, ``train/lr``, ``train/tokens_per_s`` (real tokens / wall time of the
    batch's forward, backward and optimiser step), ``train/nonfinite_skips``; with supervised rows
    ``train/attn_loss``, ``train/attn_pairs``, ``train/attn_in_mask/layer_{i}`` and ``/fused``;
    ``data/<counter>``: running totals of the batches' ``counters`` (restored on resume), among
    them ``data/skipped_records/<reason>`` (records whose sample could not be built: one per bad
    record and epoch) and ``data/skipped_batches`` (batches whose records all failed: stepped over,
    no optimiser update from them).
    Validation (epoch means, synchronised): ``val/loss``, ``val/text_loss``, ``val/attn_loss`` and
    the fused map's grounding metrics ``val/pointing_game``, ``val/pointing_top5``, ``val/iou50``,
    ``val/dice``, ``val/roc_auc``, ``val/average_precision``, ``val/attn_in_mask``,
    ``val/num_pairs``, ``val/num_samples``, ``val/num_empty_masks``; the same per layer under
    ``val/layer_{i}/``; ``val/skipped_records/<reason>``: the validation records skipped, summed
    over ranks. :attr:`last_val_maps` holds the fused maps of ``heatmap_samples`` samples
    (the first supervised ones of the first validation, the same ids afterwards).
    """

    def __init__(
        self,
        backbone: Any = None,
        loss: Any = None,
        supervised_layers: Sequence[int] | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        freeze: str = "tower_and_merger",
        gradient_checkpointing: bool = False,
        heatmap_samples: int = 4,
        max_nonfinite_in_a_row: int = 20,
        peft: Any = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone_cfg = to_dataclass(BackboneConfig, backbone, "model.backbone")
        self.peft_cfg = peft_settings(peft)
        self.hparams["peft"] = settings_dict(self.peft_cfg)
        if self.peft_cfg is not None:
            check_peft_compatible(self.peft_cfg, self.backbone_cfg, freeze)
        self.loss_cfg = loss_config(loss, supervised_layers)
        self.optimizer_cfg = to_dataclass(OptimizerConfig, optimizer, "model.optimizer")
        self.scheduler_cfg = to_dataclass(SchedulerConfig, scheduler, "model.scheduler")
        if freeze not in FREEZE_MODES:
            raise ValueError(f"model.freeze={freeze!r}: expected one of {FREEZE_MODES}")
        self.freeze = freeze
        self.gradient_checkpointing = gradient_checkpointing
        self.heatmap_samples = heatmap_samples
        self.max_nonfinite_in_a_row = max_nonfinite_in_a_row

        self.model: nn.Module | None = None
        self.adapters: Adapters | None = None
        self.processor: Any = None
        self.probe: AttentionProbe | None = None
        self._hf_ds_config: object | None = None

        self.data_counters: Counter[str] = Counter()
        self.nonfinite_skips = 0
        self.nonfinite_grad_drops = 0
        self._nonfinite_in_a_row = 0
        self._skip_in_window = False
        self._batch_started = 0.0

        names = ["fused", *(f"layer_{layer}" for layer in self.loss_cfg.layers)]
        self.val_grounding = nn.ModuleDict({name: GroundingMetrics() for name in names})
        self.val_attn_loss = MeanMetric()
        self.last_val_maps: list[SampleHeatmaps] = []
        self._heatmap_ids: list[str] | None = None
        self._epoch_maps: dict[str, SampleHeatmaps] = {}
        self._val_samples_seen = 0
        self._val_counters: Counter[str] = Counter()

    # ----------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        """Build the backbone, freeze, checkpointing and the probe (idempotent)."""
        if self.model is not None:
            return
        self._hf_ds_config = self._hf_deepspeed_config()
        if self.peft_cfg is not None and self.peft_cfg.method == "qlora":
            model, processor = quantized_backbone(self.backbone_cfg), load_processor(self.backbone_cfg)
        else:
            model, processor = build_backbone(self.backbone_cfg)
        if self.peft_cfg is None:
            apply_freeze(model, self.freeze)
        else:
            # peft freezes every parameter but the adapters and modules_to_save (a 4-bit base's
            # integer weights could not require gradients anyway).
            self.adapters = add_adapters(model, self.peft_cfg)
        if self.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.model = model
        self.processor = processor
        if self.loss_cfg.layers:
            self.probe = AttentionProbe(model, self.loss_cfg.layers, keep_heads=self.loss_cfg.keep_heads)

    def _hf_deepspeed_config(self) -> object | None:
        """Tell transformers that ZeRO-3 is on while a pretrained checkpoint loads into partitions.

        ``from_pretrained`` under Lightning's ``zero.Init`` must know ZeRO-3 is enabled to gather each
        partitioned parameter while it copies the weights in; transformers reads that from a live
        ``HfDeepSpeedConfig`` (it keeps only a weak reference, so the module holds this object).
        Exercised by ``tests/test_deepspeed.py::test_pretrained_backbone_loads_under_zero_init_and_exports``.
        """
        strategy = self._trainer.strategy if self._trainer is not None else None
        if not (isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3):
            return None
        if self.backbone_cfg.kind != "pretrained":
            return None
        from transformers.integrations import HfDeepSpeedConfig

        return HfDeepSpeedConfig(strategy.config)

    def parameter_counts(self) -> dict[str, int]:
        """``{"total", "trainable", "frozen"}`` parameter counts of the backbone (ZeRO-3 aware)."""
        if self.model is None:
            raise RuntimeError("the backbone is not built yet: call configure_model() first")
        return parameter_counts(self.model)

    # ----------------------------------------------------------------------------- forward
    def forward_losses(self, batch: SwimBatch, capture: bool) -> StepOutput:
        """Run the model on a batch and compute the losses.

        Args:
            batch: the collated batch.
            capture: arm the probe (when the batch has supervised rows and the probe exists).
        """
        if self.model is None:
            raise RuntimeError("the backbone is not built yet: call configure_model() first")
        supervision = batch.supervision
        armed = capture and self.probe is not None and supervision.num_rows > 0
        if armed:
            request = probe_request(
                supervision,
                query=self.loss_cfg.query,
                causal=self.loss_cfg.causal,
                key_mask=batch.attention_mask,
            )
            context = self.probe.capture(request)
        else:
            context = nullcontext({})
        with context as maps, balanced_tower_passes(self.model, batch) as anchors:
            hidden = self.model.model(**batch.model_inputs(), use_cache=False).last_hidden_state
        text_loss, num_tokens = labelled_cross_entropy(hidden, batch.labels, self.model.lm_head)
        attention = attention_mask_loss(maps, supervision, self.loss_cfg) if armed else None
        mask_loss = attention.loss if attention is not None else None
        loss = composite_loss(
            text_loss, mask_loss if mask_loss is not None else text_loss.new_zeros(()), self.loss_cfg
        )
        anchor = torch.stack(anchors).sum() if anchors else None
        if anchor is not None:
            loss = loss + anchor
        return StepOutput(loss, text_loss, num_tokens, mask_loss, attention, dict(maps), anchor)

    # ----------------------------------------------------------------------------- training
    def on_train_batch_start(self, batch: SwimBatch, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def training_step(self, batch: SwimBatch, batch_idx: int) -> Tensor | None:
        """One training step; ``None`` or a zero-weighted loss when the loss is non-finite (module docs)."""
        self.data_counters.update(batch.counters)
        step = self.forward_losses(batch, capture=self.loss_cfg.supervises_attention)
        size = batch.batch_size
        nonfinite = not bool(torch.isfinite(step.loss))
        if self._needs_backward_everywhere():
            nonfinite = self.trainer.strategy.reduce_boolean_decision(nonfinite, all=False)
        if nonfinite:
            return self._skip(step, batch, batch_idx)
        self._nonfinite_in_a_row = 0
        if batch.placeholder:
            return self._step_over(step)
        metrics = {
            "train/loss": step.loss,
            "train/text_loss": step.text_loss,
            "train/label_tokens": float(step.num_label_tokens),
            "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            "train/nonfinite_skips": float(self.nonfinite_skips),
        }
        if step.attention is not None:
            metrics["train/attn_loss"] = step.attention.loss
            metrics["train/attn_pairs"] = float(step.attention.num_pairs)
            for layer, mass in step.attention.per_layer_mass_in_mask.items():
                metrics[f"train/attn_in_mask/layer_{layer}"] = mass
            if step.attention.fused_mass_in_mask is not None:
                metrics["train/attn_in_mask/fused"] = step.attention.fused_mass_in_mask
        metrics.update(self._data_metrics())
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=size)
        return step.loss

    def _data_metrics(self) -> dict[str, float]:
        return {f"data/{name}": float(total) for name, total in self.data_counters.items()}

    def _step_over(self, step: StepOutput) -> Tensor | None:
        """A placeholder batch (all its records skipped): no update; a zero-weighted backward where needed."""
        self.log_dict(self._data_metrics(), on_step=True, on_epoch=False, batch_size=1)
        return zero_weighted_loss(step) if self._needs_backward_everywhere() else None

    def on_train_batch_end(self, outputs: Any, batch: SwimBatch, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._batch_started
        tokens = float(batch.attention_mask.sum())
        if elapsed > 0:
            self.log("train/tokens_per_s", tokens / elapsed, on_step=True, on_epoch=False, batch_size=1)

    def _needs_backward_everywhere(self) -> bool:
        """Whether Lightning forbids ``None`` from ``training_step`` (several processes, or DeepSpeed)."""
        return self.trainer.world_size > 1 or isinstance(self.trainer.strategy, DeepSpeedStrategy)

    def _skip(self, step: StepOutput, batch: SwimBatch, batch_idx: int) -> Tensor | None:
        self.nonfinite_skips += 1
        self._nonfinite_in_a_row += 1
        log.warning(
            "non-finite loss at global step %d (batch %d, samples %s): total %s, text %s, mask %s; "
            "step skipped (%d so far)",
            self.global_step,
            batch_idx,
            batch.sample_ids,
            float(step.loss.detach()),
            float(step.text_loss.detach()),
            None if step.mask_loss is None else float(step.mask_loss.detach()),
            self.nonfinite_skips,
        )
        self.log(
            "train/nonfinite_skips", float(self.nonfinite_skips), on_step=True, batch_size=batch.batch_size
        )
        if self._nonfinite_in_a_row > self.max_nonfinite_in_a_row:
            raise FloatingPointError(
                f"{self._nonfinite_in_a_row} non-finite losses in a row (model.max_nonfinite_in_a_row="
                f"{self.max_nonfinite_in_a_row}); the run has diverged"
            )
        if not self._needs_backward_everywhere():
            return None
        self._skip_in_window = True
        return zero_weighted_loss(step)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Drop the step's gradients when a skipped batch left non-finite ones (several processes)."""
        if not self._skip_in_window:
            return
        self._skip_in_window = False
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        norms = torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params])
        if bool(torch.isfinite(norms).all()):
            return
        for param in params:
            param.grad = None
        self.nonfinite_grad_drops += 1
        log.warning("non-finite gradients after a skipped batch: optimiser step %d dropped", self.global_step)

    # ----------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._epoch_maps = {}

    def validation_step(self, batch: SwimBatch, batch_idx: int) -> None:
        """Losses, grounding metrics of the fused and per-layer maps, and heatmap snapshots."""
        self._val_counters.update(batch.counters)
        step = self.forward_losses(batch, capture=True)
        if batch.placeholder:
            return
        size = batch.batch_size
        self.log("val/loss", step.loss, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("val/text_loss", step.text_loss, on_epoch=True, batch_size=size, sync_dist=True)
        attention = step.attention
        pairs = 0 if attention is None else int(attention.num_pairs)
        self.val_attn_loss.update(attention.loss.detach() if pairs else 0.0, weight=float(pairs))
        if attention is not None:
            world = self.trainer.world_size
            local = self._val_samples_seen + torch.arange(size, device=attention.fused.device)
            sample_index = local * world + self.global_rank
            named = {"fused": attention.fused, **{f"layer_{k}": v for k, v in step.maps.items()}}
            for name, maps in named.items():
                layer_maps = maps.detach().float()
                if layer_maps.dim() == 3:
                    layer_maps = layer_maps.mean(dim=1)
                update_from_maps(self.val_grounding[name], layer_maps, batch.supervision, sample_index)
            self._keep_heatmaps(batch, attention.fused)
        self._val_samples_seen += size

    def _keep_heatmaps(self, batch: SwimBatch, fused: Tensor) -> None:
        """Snapshot the fused maps of the fixed heatmap samples (chosen in the first validation)."""
        for sample in torch.unique(batch.supervision.row_sample).tolist():
            seen = self._val_samples_seen + sample
            sample_id = batch.sample_ids[sample] if batch.sample_ids else f"val/{seen}"
            choosing = self._heatmap_ids is None and len(self._epoch_maps) < self.heatmap_samples
            chosen = self._heatmap_ids is not None and sample_id in self._heatmap_ids
            if choosing or chosen:
                frames = sample_frames(batch, sample, self.model.config.video_token_id, self.processor)
                snapshot = sample_heatmaps(
                    fused, batch.supervision, batch.input_ids, sample, sample_id, frames
                )
                self._epoch_maps[sample_id] = snapshot

    def on_validation_epoch_end(self) -> None:
        attn_loss = self.val_attn_loss.compute()
        self.val_attn_loss.reset()
        if torch.isfinite(attn_loss):
            self.log("val/attn_loss", attn_loss)
        for name, metric in self.val_grounding.items():
            values = metric.compute()
            metric.reset()
            prefix = "val" if name == "fused" else f"val/{name}"
            for key, value in values.items():
                if math.isfinite(float(value)):
                    self.log(f"{prefix}/{key}", float(value))
        if self._heatmap_ids is None:
            self._heatmap_ids = list(self._epoch_maps)
        self.last_val_maps = [self._epoch_maps[i] for i in self._heatmap_ids if i in self._epoch_maps]
        self._val_samples_seen = 0
        for name, count in skipped_records(self._val_counters, self.trainer.world_size).items():
            self.log(f"val/{name}", float(count))
        self._val_counters.clear()

    # ----------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the trainable parameters and a per-step schedule over the run's optimiser steps."""
        if self.model is None:
            raise RuntimeError("the backbone is not built yet: call configure_model() first")
        strategy = self.trainer.strategy
        offload = False
        if isinstance(strategy, DeepSpeedStrategy):
            zero = strategy.config.get("zero_optimization", {})
            offload = zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")
        optimizer = build_optimizer(self.model, self.optimizer_cfg, cpu_offload=offload)
        scheduler = build_scheduler(optimizer, self.scheduler_cfg, self.trainer.estimated_stepping_batches)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["swim_counters"] = {
            "data": dict(self.data_counters),
            "nonfinite_skips": self.nonfinite_skips,
            "nonfinite_grad_drops": self.nonfinite_grad_drops,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("swim_counters", {})
        self.data_counters = Counter(counters.get("data", {}))
        self.nonfinite_skips = int(counters.get("nonfinite_skips", 0))
        self.nonfinite_grad_drops = int(counters.get("nonfinite_grad_drops", 0))
