"""Fusing the supervised layers' attention maps into one map per row."""

from __future__ import annotations

import torch
from torch import Tensor

# Probabilities are clamped here before the log of the product fusion: far below any real
# attention probability, and well inside fp32's normal range.
LOG_FLOOR = 1e-30


def fuse_layers(maps: Tensor, valid: Tensor, mode: str) -> Tensor:
    """Fuse per-layer maps over each row's valid visual keys.

    Args:
        maps: ``(n_layers, R, K)`` attention probabilities of each row over its visual keys.
        valid: ``(R, K)`` bool, the row's real visual keys.
        mode: ``product``: the renormalised product of the layers' maps, computed stably as a
            softmax over the valid keys of the sum of the clamped logs; ``mean``: the mean over
            layers, renormalised over the valid keys.

    Returns:
        ``(R, K)`` fp32, each row a distribution over its valid keys; 0 at invalid keys (and on
        rows without a valid key).
    """
    if maps.dim() != 3 or maps.shape[1:] != valid.shape:
        raise ValueError(
            f"maps {tuple(maps.shape)} must be (n_layers, R, K) with valid {tuple(valid.shape)} = (R, K)"
        )
    maps = maps.float()
    if mode == "product":
        logits = torch.log(maps.clamp_min(LOG_FLOOR)).sum(dim=0)
        logits = logits.masked_fill(~valid, torch.finfo(torch.float32).min)
        return torch.softmax(logits, dim=-1) * valid
    if mode == "mean":
        mean = maps.mean(dim=0) * valid
        return mean / mean.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    raise ValueError(f"loss.fusion={mode!r}: expected 'product' or 'mean'")
