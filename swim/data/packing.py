"""Packed collation: the samples of one batch laid end to end in a single row, no padding.

``data.packing=true`` (with ``data.max_tokens_per_batch``) makes the training loader yield first-fit
packed rows (``swim.data.budget.packed_batches``) collated here. The batch is the padded
:func:`~swim.data.collate.collate` batch of the same samples, flattened into one row of
``L = sum(L_b)`` tokens:

- ``position_ids (4, 1, L)``: row 0 restarts at 0 with every sample; rows 1-3 are each sample's own
  MRoPE positions (:func:`~swim.data.positions.mrope_positions`), exactly those it has alone.
  Stock transformers reads row 0 as the packed-sequence boundaries (FlashAttention-2's varlen
  ``cu_seq_lens``; a block-causal mask for SDPA and eager) as long as no attention mask is passed
  (:meth:`~swim.data.batch.SwimBatch.model_inputs` leaves it out);
- every sample's first label is -100, so no loss term crosses a sample boundary;
- the supervision keeps its per-sample indexing (``row_sample`` still names the sample; grids,
  instances and masks are untouched) with ``row_query``, ``row_token`` and ``visual_keys`` shifted
  by the sample's offset, plus ``sample_row`` (all 0), ``sample_offset`` and ``sample_length``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from swim.data.batch import Supervision, SwimBatch
from swim.data.chat import IGNORE_INDEX
from swim.data.collate import collate
from swim.data.dataset import SkippedRecord
from swim.data.positions import MRope, mrope_positions
from swim.data.sample import Sample


def sample_positions(sample: Sample, rope: MRope) -> Tensor:
    """``(4, L_b)`` long: the text positions ``0..L_b-1`` and the sample's ``(3, L_b)`` MRoPE positions."""
    mrope = mrope_positions(
        sample.mm_token_type_ids,
        rope,
        video_grid_thw=sample.video_grid_thw,
        image_grid_thw=sample.image_grid_thw,
        second_per_grid_ts=sample.second_per_grid_ts,
    )
    text = torch.arange(len(sample), dtype=torch.long)
    return torch.cat([text[None], mrope])


def _shift(supervision: Supervision, offsets: Tensor, lengths: Tensor) -> Supervision:
    """The supervision of a padded batch with every position moved to its sample's packed column."""
    row_offset = offsets[supervision.row_sample]
    return Supervision(
        row_sample=supervision.row_sample,
        row_query=supervision.row_query + row_offset,
        row_token=supervision.row_token + row_offset,
        row_instance=supervision.row_instance,
        row_phrase=supervision.row_phrase,
        visual_keys=[keys + offsets[b] for b, keys in enumerate(supervision.visual_keys)],
        grid=supervision.grid,
        instance_sample=supervision.instance_sample,
        cell_masks=supervision.cell_masks,
        cell_valid=supervision.cell_valid,
        pixel_masks=supervision.pixel_masks,
        sample_row=torch.zeros_like(offsets),
        sample_offset=offsets,
        sample_length=lengths,
    )


def collate_packed(items: Sequence[Sample | SkippedRecord], pad_id: int, rope: MRope) -> SwimBatch:
    """Pack the samples among ``items`` into one row (see the module docstring).

    Args:
        items: at least one sample or skipped record; skipped ones are counted and dropped.
        pad_id: the tokenizer's pad id (only a batch whose records all failed uses it).
        rope: the model family's MRoPE parameters.

    Returns:
        A :class:`SwimBatch` with ``input_ids``, ``attention_mask`` (ones), ``labels``,
        ``mm_token_type_ids`` of shape ``(1, L)``, ``L = sum(L_b)`` over the ``B`` samples, and
        ``position_ids (4, 1, L)``; the supervision covers ``B`` samples. With no sample left, the
        unpacked placeholder of :func:`~swim.data.collate.collate`.
    """
    padded = collate(items, pad_id)
    if padded.placeholder:
        return padded
    samples = [item for item in items if not isinstance(item, SkippedRecord)]
    lengths = torch.tensor([len(s) for s in samples], dtype=torch.long)
    offsets = torch.cumsum(lengths, dim=0) - lengths
    labels = []
    for s in samples:
        sample_labels = s.labels.clone()
        sample_labels[0] = IGNORE_INDEX
        labels.append(sample_labels)
    return SwimBatch(
        input_ids=torch.cat([s.input_ids for s in samples])[None],
        attention_mask=torch.ones(1, int(lengths.sum()), dtype=torch.long),
        labels=torch.cat(labels)[None],
        mm_token_type_ids=torch.cat([s.mm_token_type_ids for s in samples])[None],
        position_ids=torch.cat([sample_positions(s, rope) for s in samples], dim=1)[:, None],
        supervision=_shift(padded.supervision, offsets, lengths),
        pixel_values_videos=padded.pixel_values_videos,
        video_grid_thw=padded.video_grid_thw,
        second_per_grid_ts=padded.second_per_grid_ts,
        pixel_values=padded.pixel_values,
        image_grid_thw=padded.image_grid_thw,
        sample_ids=padded.sample_ids,
        counters=padded.counters,
    )
