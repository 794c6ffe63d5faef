"""SWIM losses: layer fusion, (row, cell) pairing with masks, the mask loss and the composite loss."""

from swim.losses.composite import composite_loss
from swim.losses.config import LossConfig
from swim.losses.fusion import fuse_layers
from swim.losses.mask_loss import AttentionLossOutput, attention_mask_loss
from swim.losses.pairs import PairGroup, pair_groups

__all__ = [
    "AttentionLossOutput",
    "LossConfig",
    "PairGroup",
    "attention_mask_loss",
    "composite_loss",
    "fuse_layers",
    "pair_groups",
]
