"""Optimiser, learning-rate schedule and parameter freezing of the SWIM module.

Only parameters that require gradients reach the optimiser, so a frozen vision tower holds no
AdamW state. Weight decay applies to matrices only: norms' weights and biases (tensors with fewer
than two dimensions) sit in a group without it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from swim.model.families import family_of
from swim.model.families.base import FREEZE_MODES

log = logging.getLogger(__name__)

OPTIMIZER_IMPLS = ("auto", "torch", "deepspeed_cpu")
SCHEDULES = ("cosine", "constant")


@dataclass
class OptimizerConfig:
    """AdamW settings (``model.optimizer``).

    Attributes:
        lr: peak learning rate (the reference recipe's 2e-5).
        weight_decay: decoupled weight decay of matrices; norms and biases get none.
        betas: AdamW's ``(beta1, beta2)``.
        eps: AdamW's epsilon.
        impl: ``torch`` (``torch.optim.AdamW``), ``deepspeed_cpu`` (DeepSpeed's ``DeepSpeedCPUAdam``,
            which ZeRO with optimizer offload to the CPU requires) or ``auto`` (``deepspeed_cpu``
            exactly when the trainer's DeepSpeed config offloads the optimizer, else ``torch``).
    """

    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    impl: str = "auto"

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in self.betas):
            raise ValueError(f"model.optimizer.betas={self.betas}: expected two values in [0, 1)")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.lr <= 0:
            raise ValueError(f"model.optimizer.lr={self.lr}: expected a positive learning rate")
        if self.weight_decay < 0:
            raise ValueError(f"model.optimizer.weight_decay={self.weight_decay}: expected >= 0")
        if self.impl not in OPTIMIZER_IMPLS:
            raise ValueError(f"model.optimizer.impl={self.impl!r}: expected one of {OPTIMIZER_IMPLS}")


@dataclass
class SchedulerConfig:
    """Learning-rate schedule (``model.scheduler``), stepped once per optimiser step.

    Attributes:
        name: ``cosine`` (linear warmup, then cosine decay to 0 at the last step) or ``constant``
            (linear warmup, then flat).
        warmup_steps: warmup length in optimiser steps; when > 0 it wins over ``warmup_ratio``.
        warmup_ratio: warmup length as a share of the run's optimiser steps (used when
            ``warmup_steps`` is 0).
    """

    name: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.03

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"model.scheduler.name={self.name!r}: expected one of {SCHEDULES}")
        if self.warmup_steps < 0:
            raise ValueError(f"model.scheduler.warmup_steps={self.warmup_steps}: expected >= 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"model.scheduler.warmup_ratio={self.warmup_ratio}: expected a value in [0, 1)")

    def num_warmup_steps(self, total_steps: int) -> int:
        """Warmup length in optimiser steps for a run of ``total_steps`` steps."""
        if self.warmup_steps > 0:
            return self.warmup_steps
        return math.ceil(self.warmup_ratio * total_steps)


def apply_freeze(model: nn.Module, mode: str) -> None:
    """Set ``requires_grad`` for a ``...ForConditionalGeneration`` model of any family.

    ``tower_and_merger`` freezes every parameter under ``model.visual`` (the reference recipe),
    ``tower`` freezes the vision blocks and patch embedding but trains the mergers (the family
    adapter names them), ``none`` trains everything. The language model, embeddings and LM head
    always train.
    """
    if mode not in FREEZE_MODES:
        raise ValueError(f"model.freeze={mode!r}: expected one of {FREEZE_MODES}")
    family = family_of(model)
    for name, param in model.named_parameters():
        param.requires_grad_(not family.frozen(name, mode))


def param_numel(param: nn.Parameter) -> int:
    """Number of elements of a parameter, also when DeepSpeed ZeRO-3 has partitioned it away."""
    return int(getattr(param, "ds_numel", param.numel()))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"total", "trainable", "frozen"}`` parameter counts (tied parameters counted once)."""
    total = trainable = 0
    for param in model.parameters():
        n = param_numel(param)
        total += n
        trainable += n if param.requires_grad else 0
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: matrices with decay, the rest without.

    Raises:
        ValueError: the model has no trainable parameter.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        ndim = len(getattr(param, "ds_shape", param.shape))
        (decay if ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameter; check model.freeze")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, cpu_offload: bool) -> Optimizer:
    """AdamW over the trainable parameters of ``model``.

    Args:
        cpu_offload: whether the DeepSpeed config offloads the optimizer to the CPU; with
            ``impl=auto`` this selects ``DeepSpeedCPUAdam``.
    """
    groups = param_groups(model, cfg.weight_decay)
    impl = cfg.impl if cfg.impl != "auto" else ("deepspeed_cpu" if cpu_offload else "torch")
    if impl == "deepspeed_cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def build_scheduler(optimizer: Optimizer, cfg: SchedulerConfig, total_steps: int) -> LambdaLR:
    """The learning-rate schedule over ``total_steps`` optimiser steps."""
    if total_steps <= 0 or not math.isfinite(total_steps):
        raise ValueError(
            f"cannot size the {cfg.name} schedule: the trainer estimates {total_steps} optimiser steps; "
            "set trainer.max_steps or use a sized training dataloader"
        )
    warmup = min(cfg.num_warmup_steps(int(total_steps)), int(total_steps))
    log.info("lr schedule %s: %d optimiser steps, %d warmup", cfg.name, total_steps, warmup)
    if cfg.name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, int(total_steps))
    return get_constant_schedule_with_warmup(optimizer, warmup)
