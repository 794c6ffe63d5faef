"""The total SWIM training loss."""

from __future__ import annotations

from torch import Tensor

from swim.losses.config import LossConfig


def composite_loss(text_loss: Tensor, mask_loss: Tensor, cfg: LossConfig) -> Tensor:
    """``text_weight * text_loss + mask_weight * mask_loss`` (scalars in, scalar out)."""
    return cfg.text_weight * text_loss + cfg.mask_weight * mask_loss
