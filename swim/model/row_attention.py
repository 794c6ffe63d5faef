"""One layer's attention probabilities of selected query rows, recomputed in fp32.

:func:`row_attention` takes the rotary-embedded queries and keys an attention kernel received and
the mask it received, and returns the softmax of the requested rows over their full causal row:
the probabilities the model really uses. Memory is ``O(R x L x heads)`` (``R`` rows, ``L`` sequence
length), never ``O(L^2)``.

Packed rows (several samples in one row, ``swim.data.packing``): a causal row's softmax runs over
its own sample's keys only, read from what the kernel itself received: the block-causal mask under
SDPA and eager, the varlen boundaries under FlashAttention-2 (:func:`varlen_bounds`: ``cu_seq_lens_q``
when given, else derived from the packed text ``position_ids`` exactly as transformers'
FlashAttention path does). A non-causal (reference) row is limited to its sample's span.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from swim.losses.fusion import upcast


def row_attention(
    query: Tensor,
    key: Tensor,
    attention_mask: Tensor | None,
    row_sample: Tensor,
    row_query: Tensor,
    row_slot: Tensor,
    max_rows: int,
    scaling: float,
    causal: bool = True,
    key_mask: Tensor | None = None,
    cu_seq_lens: Tensor | None = None,
    row_span: Tensor | None = None,
) -> Tensor:
    """Softmax attention probabilities of selected query rows over their full causal row, in fp32.

    Args:
        query: ``(B, Hq, L, D)`` rotary-embedded queries of one layer.
        key: ``(B, Hkv, L, D)`` rotary-embedded keys; ``Hq`` is a multiple of ``Hkv`` (grouped-query
            attention: query head ``h`` reads key head ``h // (Hq / Hkv)``, as ``repeat_kv`` does).
        attention_mask: what the base kernel received: ``None`` (causal, no padding), ``(B, L)``
            padding mask (FlashAttention), ``(B or 1, 1, L, L)`` bool (True attends, SDPA) or float
            additive (eager).
        row_sample: ``(R,)`` long batch index of each row.
        row_query: ``(R,)`` long query position of each row.
        row_slot: ``(R,)`` long rank of the row among its sample's rows (``< max_rows``).
        max_rows: the largest number of rows of one sample.
        scaling: the score scale (``head_dim ** -0.5``).
        causal: ``False`` ignores ``attention_mask`` and takes the softmax over every unpadded key
            of the row, future ones included (the reference code's rows).
        key_mask: ``(B, L)`` padding mask (1 = real) of a non-causal row; ``None``: no padding.
        cu_seq_lens: ``(S + 1,)`` cumulative sequence starts of a packed ``B = 1`` row
            (FlashAttention-2's varlen boundaries) with ``attention_mask=None``: a causal row sees
            only keys of its own sequence. ``None``: one sequence per row.
        row_span: ``(R, 2)`` ``[start, end)`` of each non-causal row's sample in a packed row.

    Returns:
        ``(R, Hq, L)`` fp32 probabilities; entries outside the causal (or, with ``causal=False``,
        the whole), unpadded row are 0.
    """
    batch, num_heads, length, head_dim = query.shape
    num_kv_heads = key.shape[1]
    groups = num_heads // num_kv_heads
    if key.shape[2] != length:
        raise RuntimeError(
            f"the attention probe captures full-sequence forwards only: query length {length} differs from "
            f"key length {key.shape[2]} (a KV cache is in use)"
        )
    num_rows = row_query.numel()
    rows = upcast(query[row_sample, :, row_query])
    padded = query.new_zeros(batch, max_rows, num_heads, head_dim, dtype=rows.dtype)
    padded = padded.index_put((row_sample, row_slot), rows)
    grouped = padded.view(batch, max_rows, num_kv_heads, groups, head_dim).permute(0, 2, 3, 1, 4)
    grouped = grouped.reshape(batch, num_kv_heads, groups * max_rows, head_dim)
    scores = torch.matmul(grouped, upcast(key).transpose(-1, -2)) * scaling
    scores = scores.view(batch, num_kv_heads, groups, max_rows, length).permute(0, 3, 1, 2, 4)
    scores = scores[row_sample, row_slot].reshape(num_rows, num_heads, length)

    positions = torch.arange(length, device=query.device)
    if not causal:
        if key_mask is not None:
            allowed = key_mask[row_sample].bool()
            scores = scores.masked_fill(~allowed[:, None, :], torch.finfo(torch.float32).min)
        if row_span is not None:
            inside = (positions[None, :] >= row_span[:, :1]) & (positions[None, :] < row_span[:, 1:])
            scores = scores.masked_fill(~inside[:, None, :], torch.finfo(torch.float32).min)
    elif attention_mask is None or attention_mask.dim() == 2:
        allowed = positions[None, :] <= row_query[:, None]
        if cu_seq_lens is not None:
            if batch != 1:
                raise ValueError(f"cu_seq_lens describe one packed row, got a batch of {batch}")
            bounds = cu_seq_lens.to(device=query.device, dtype=torch.long)
            start = bounds[torch.bucketize(row_query, bounds, right=True) - 1]
            allowed = allowed & (positions[None, :] >= start[:, None])
        if attention_mask is not None:
            allowed = allowed & attention_mask[row_sample].bool()
        scores = scores.masked_fill(~allowed[:, None, :], torch.finfo(torch.float32).min)
    elif attention_mask.dim() == 4:
        mask_sample = row_sample if attention_mask.shape[0] > 1 else torch.zeros_like(row_sample)
        mask_rows = attention_mask[mask_sample, 0, row_query]
        if mask_rows.dtype == torch.bool:
            scores = scores.masked_fill(~mask_rows[:, None, :], torch.finfo(torch.float32).min)
        else:
            scores = scores + mask_rows.to(scores.dtype)[:, None, :]
    else:
        raise ValueError(f"unexpected attention mask of shape {tuple(attention_mask.shape)}")
    return torch.softmax(scores, dim=-1)


def varlen_bounds(attention_mask: Tensor | None, kwargs: dict[str, object]) -> Tensor | None:
    """The ``(S + 1,)`` packed-sequence boundaries a mask-free (FlashAttention-2) kernel uses, or ``None``.

    ``cu_seq_lens_q`` when the caller passed it; else, with packed text ``position_ids`` ``(1, L)``
    (the model passes them to every attention call), the boundaries transformers derives from them.
    """
    given = kwargs.get("cu_seq_lens_q")
    if isinstance(given, Tensor):
        return given
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or not isinstance(position_ids, Tensor) or position_ids.dim() != 2:
        return None
    if position_ids.shape[0] != 1:
        return None
    (cu_seq_lens, _), _ = prepare_fa_kwargs_from_position_ids(position_ids)
    return cu_seq_lens


def row_slots(row_sample: Tensor) -> tuple[Tensor, int]:
    """``(R,)`` rank of each row among its sample's rows, and the largest rows-per-sample count."""
    if row_sample.numel() == 0:
        return row_sample.clone(), 0
    counts = torch.bincount(row_sample)
    order = torch.argsort(row_sample, stable=True)
    first = torch.cumsum(counts, dim=0) - counts
    slot = torch.empty_like(row_sample)
    slot[order] = torch.arange(row_sample.numel(), device=row_sample.device) - first[row_sample[order]]
    return slot, int(counts.max())
