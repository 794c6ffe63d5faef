"""Which attention rows the probe captures: a batch's supervision as a :class:`ProbeRequest`.

A request names, per supervised row, its batch row and query position (by the query convention:
the row predicting the tagged token, or the tagged token's own row) and the sequence positions of
its sample's visual tokens, the keys whose probabilities :class:`~swim.model.probe.AttentionProbe`
keeps. In a packed batch (``swim.data.packing``) it also holds each row's sample span.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from swim.data.batch import Supervision
from swim.losses.config import QUERY_CONVENTIONS


@dataclass
class ProbeRequest:
    """Which attention rows and keys to capture in one forward.

    Attributes:
        row_sample: ``(R,)`` long, batch index (row of ``input_ids``) of each row.
        row_query: ``(R,)`` long, sequence position of each row's query.
        key_index: ``(R, K)`` long, sequence positions of the row's sample's visual tokens
            (``Supervision.visual_keys``), padded with 0 up to ``K`` (the most keys of the rows).
        key_valid: ``(R, K)`` bool, which entries of ``key_index`` are real.
        causal: softmax over each row's causal keys (what the model computes); ``False``: over the
            whole row, future keys included (the reference code's recomputation).
        key_mask: ``(B, L)`` the batch's padding mask (1 = real token); the only mask of a
            non-causal row (``None``: no padding).
        row_span: ``(R, 2)`` long ``[start, end)`` columns of each row's sample in a packed batch
            (limits a non-causal row to its sample), or ``None`` (one sample per row).
    """

    row_sample: Tensor
    row_query: Tensor
    key_index: Tensor
    key_valid: Tensor
    causal: bool = True
    key_mask: Tensor | None = None
    row_span: Tensor | None = None

    @property
    def num_rows(self) -> int:
        return int(self.row_query.numel())

    def to(self, device: torch.device | str) -> ProbeRequest:
        moved = {
            f.name: value.to(device) if isinstance(value := getattr(self, f.name), Tensor) else value
            for f in fields(self)
        }
        return ProbeRequest(**moved)


def probe_request(
    supervision: Supervision,
    *,
    query: str | None = None,
    causal: bool = True,
    key_mask: Tensor | None = None,
) -> ProbeRequest:
    """The probe request of a batch's supervision.

    Args:
        supervision: the batch's attention supervision (``R`` rows).
        query: ``None`` uses ``supervision.row_query`` as given; ``predicting`` uses the row before
            the tagged token (``row_token - 1``), ``token`` the tagged token's own row.
        causal: see :class:`ProbeRequest`.
        key_mask: ``(B, L)`` padding mask, needed for non-causal rows of a padded batch.

    Returns:
        A request whose row ``r`` has the keys ``visual_keys[s]`` of its sample ``s`` (``T*h*w``
        positions in grid order, ``grid[s] = (T, h, w)``); ``K`` is the most keys of one sample
        (0 without rows). In a packed batch a row's batch index is its sample's
        ``sample_row`` and its span the sample's ``[offset, offset + length)``.
    """
    if query is None:
        row_query = supervision.row_query
    elif query == "predicting":
        row_query = supervision.row_token - 1
    elif query == "token":
        row_query = supervision.row_token
    else:
        raise ValueError(f"loss.query={query!r}: expected one of {QUERY_CONVENTIONS}")
    row_sample = supervision.row_sample
    table, valid = supervision.key_table()
    sizes = valid.sum(dim=-1)[row_sample]
    no_video = sizes <= 0
    if bool(no_video.any()):
        rows = no_video.nonzero().flatten().tolist()
        raise ValueError(
            f"supervision rows {rows} belong to samples without a video (no visual keys): "
            "rows need a video to attend to"
        )
    if bool((row_query < 0).any()):
        rows = (row_query < 0).nonzero().flatten().tolist()
        raise ValueError(
            f"supervision rows {rows} have a negative query position (a tag on the first token?)"
        )
    num_keys = int(sizes.max()) if row_sample.numel() else 0
    key_index = table[row_sample, :num_keys]
    key_valid = valid[row_sample, :num_keys]
    row_span = None
    if supervision.sample_row is not None:
        if supervision.sample_offset is None or supervision.sample_length is None:
            raise ValueError("a packed supervision (sample_row set) needs sample_offset and sample_length")
        start = supervision.sample_offset[row_sample]
        row_span = torch.stack([start, start + supervision.sample_length[row_sample]], dim=-1)
        row_sample = supervision.sample_row[row_sample]
    return ProbeRequest(
        row_sample=row_sample,
        row_query=row_query,
        key_index=key_index,
        key_valid=key_valid,
        causal=causal,
        key_mask=key_mask,
        row_span=row_span,
    )
