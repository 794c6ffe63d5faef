"""Bilinear resizing of token-grid maps as two small matrix products.

``F.interpolate(mode="bilinear", align_corners=False)`` is separable: resizing ``(h, w)`` to
``(H, W)`` equals ``R_h @ map @ R_w.T`` with ``R_h`` the ``(H, h)`` matrix of 1-D interpolation
weights (two non-zeros a row). As matrix products the forward and backward passes run on BLAS,
faster on CPU than the interpolation kernel, whose backward scatters; the values agree to float
rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bilinear_weights(size_in: int, size_out: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The 1-D bilinear interpolation matrix of ``F.interpolate`` with ``align_corners=False``.

    Output pixel ``i`` samples the input at ``(i + 0.5) * size_in / size_out - 0.5`` (clamped at 0)
    and mixes the two nearest input pixels (the last one repeated at the border).

    The weights are computed in float64 on the CPU (any accelerator, whatever its float64 support)
    and then moved.

    Returns:
        ``(size_out, size_in)`` on ``device`` in ``dtype``; each row sums to 1.
    """
    centres = torch.arange(size_out, dtype=torch.float64) + 0.5
    source = (centres * size_in / size_out - 0.5).clamp_min(0)
    low = source.floor().long().clamp_max(size_in - 1)
    high = (low + 1).clamp_max(size_in - 1)
    frac = source - low
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    weights.index_put_((rows, low), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights.to(device=device, dtype=dtype)


def bilinear_resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resizing of each map (``align_corners=False``), differentiable.

    Args:
        maps: ``(..., h, w)`` float.
        size: ``(H, W)``.

    Returns:
        ``(..., H, W)``; ``maps`` itself when the sizes agree.
    """
    height, width = size
    if tuple(maps.shape[-2:]) == (height, width):
        return maps
    rows = bilinear_weights(maps.shape[-2], height, device=maps.device, dtype=maps.dtype)
    cols = bilinear_weights(maps.shape[-1], width, device=maps.device, dtype=maps.dtype)
    return rows @ maps @ cols.T
