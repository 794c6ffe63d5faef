"""Fusing the supervised layers' attention maps into one map per row."""

from __future__ import annotations

import torch
from torch import Tensor

from swim.losses.config import RENORMALISATIONS

# Probabilities are clamped here before the log of the product fusion: far below any real
# attention probability, and well inside fp32's normal range.
LOG_FLOOR = 1e-30
# The reference code's absolute epsilon in the renormalisation (``loss.renormalise=reference``).
REFERENCE_RENORM_EPS = 1e-6


def upcast(tensor: Tensor) -> Tensor:
    """``tensor`` in at least fp32: half precisions become fp32, fp32 and fp64 stay (gradient checks
    run the losses in fp64)."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def fuse_layers(maps: Tensor, valid: Tensor, mode: str, renormalise: str = "exact") -> Tensor:
    """Fuse per-layer maps over each row's valid visual keys.

    Args:
        maps: ``(n_layers, R, K)`` attention probabilities of each row over its visual keys.
        valid: ``(R, K)`` bool, the row's real visual keys.
        mode: ``product``: the product of the layers' maps; ``mean``: their mean.
        renormalise: ``exact``: each row renormalised to sum to 1 over its valid keys (the product
            computed stably as a softmax of the sum of the clamped logs); ``reference``: divided by
            ``sum + 1e-6`` as the reference code does, so a product that sums to far below 1e-6
            (six layers of a 7B model) no longer sums to 1.

    Returns:
        ``(R, K)`` in at least fp32 (:func:`upcast`) over each row's valid keys (a distribution
        under ``exact``); 0 at invalid keys (and on rows without a valid key).
    """
    if maps.dim() != 3 or maps.shape[1:] != valid.shape:
        raise ValueError(
            f"maps {tuple(maps.shape)} must be (n_layers, R, K) with valid {tuple(valid.shape)} = (R, K)"
        )
    maps = upcast(maps)
    if renormalise not in RENORMALISATIONS:
        raise ValueError(f"loss.renormalise={renormalise!r}: expected one of {RENORMALISATIONS}")
    if renormalise == "reference" and mode in ("product", "mean"):
        combined = (maps.prod(dim=0) if mode == "product" else maps.mean(dim=0)) * valid
        return combined / (combined.sum(dim=-1, keepdim=True) + REFERENCE_RENORM_EPS)
    if mode == "product":
        logits = torch.log(maps.clamp_min(LOG_FLOOR)).sum(dim=0)
        logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1) * valid
    if mode == "mean":
        mean = maps.mean(dim=0) * valid
        return mean / mean.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(mean.dtype).tiny)
    raise ValueError(f"loss.fusion={mode!r}: expected 'product' or 'mean'")
