"""Collation: a list of :class:`Sample` -> one :class:`SwimBatch` (``swim/data/batch.py``).

Sequences are right-padded, so every position inside a sample keeps its index and the supervised
rows need no shift. Visual tensors are concatenated in batch order (the order the model consumes its
``video_grid_thw`` / ``image_grid_thw`` rows). Instance and phrase indices become batch-global.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from swim.data.batch import Supervision, SwimBatch, check_visual_keys
from swim.data.chat import IGNORE_INDEX, Rows
from swim.data.dataset import SkippedRecord
from swim.data.sample import Sample


def _pad(tensors: Sequence[Tensor], length: int, value: int) -> Tensor:
    """``B`` tensors ``(L_b,)`` -> ``(B, length)`` right-padded with ``value``."""
    out = torch.full((len(tensors), length), value, dtype=tensors[0].dtype)
    for b, tensor in enumerate(tensors):
        out[b, : tensor.numel()] = tensor
    return out


def _cat(tensors: Sequence[Tensor | None]) -> Tensor | None:
    """Concatenate the non-``None`` tensors along dim 0, or ``None`` if there are none."""
    present = [t for t in tensors if t is not None]
    return torch.cat(present) if present else None


def collate(items: Sequence[Sample | SkippedRecord], pad_id: int) -> SwimBatch:
    """Batch the samples among ``items`` (any mix of video, image and text-only, supervised or not).

    Args:
        items: at least one sample or skipped record; the skipped ones are counted and dropped.
        pad_id: the tokenizer's pad id for ``input_ids``.

    Returns:
        A :class:`SwimBatch` with ``input_ids``, ``attention_mask``, ``labels``, ``mm_token_type_ids``
        of shape ``(B, L)``, ``B`` the samples left, ``L`` the longest of them; rows ``(R,)`` with
        ``R`` the sum of the samples' rows; ``N`` instances in batch order. With no sample left,
        a placeholder of shape ``(1, 1)``: one pad token, no label, no row, no sample id.
    """
    if not items:
        raise ValueError("collate needs at least one sample")
    skipped = Counter(item.counter for item in items if isinstance(item, SkippedRecord))
    samples = [item for item in items if not isinstance(item, SkippedRecord)]
    if not samples:
        batch = collate([_placeholder(pad_id)], pad_id)
        batch.sample_ids, batch.counters, batch.placeholder = [], {**skipped, "skipped_batches": 1}, True
        return batch
    length = max(len(s) for s in samples)
    row_sample, row_query, row_token, row_instance, row_phrase = [], [], [], [], []
    instance_sample: list[int] = []
    cell_masks: list[Tensor] = []
    cell_valid: list[Tensor] = []
    pixel_masks: list[Tensor] | None = [] if all(s.pixel_masks is not None for s in samples) else None
    num_instances = num_phrases = 0
    counters: Counter[str] = Counter(skipped)
    for b, s in enumerate(samples):
        rows = s.rows
        row_sample.append(torch.full((len(rows),), b, dtype=torch.long))
        row_query.append(rows.query)
        row_token.append(rows.token)
        row_instance.append(rows.instance + num_instances)
        row_phrase.append(rows.phrase + num_phrases)
        instance_sample.extend([b] * len(s.cell_masks))
        cell_masks.extend(s.cell_masks)
        cell_valid.extend(s.cell_valid)
        if pixel_masks is not None and s.pixel_masks is not None:
            pixel_masks.extend(s.pixel_masks)
        num_instances += len(s.cell_masks)
        num_phrases += len(s.phrases)
        counters.update(s.counters)
    visual_keys = [s.visual_keys for s in samples]
    grid = torch.tensor([list(s.grid) for s in samples], dtype=torch.long).reshape(len(samples), 3)
    check_visual_keys(visual_keys, grid)
    supervision = Supervision(
        row_sample=torch.cat(row_sample),
        row_query=torch.cat(row_query),
        row_token=torch.cat(row_token),
        row_instance=torch.cat(row_instance),
        row_phrase=torch.cat(row_phrase),
        visual_keys=visual_keys,
        grid=grid,
        instance_sample=torch.tensor(instance_sample, dtype=torch.long),
        cell_masks=cell_masks,
        cell_valid=cell_valid,
        pixel_masks=pixel_masks,
    )
    return SwimBatch(
        input_ids=_pad([s.input_ids for s in samples], length, pad_id),
        attention_mask=_pad([s.attention_mask for s in samples], length, 0),
        labels=_pad([s.labels for s in samples], length, IGNORE_INDEX),
        mm_token_type_ids=_pad([s.mm_token_type_ids for s in samples], length, 0),
        supervision=supervision,
        pixel_values_videos=_cat([s.pixel_values_videos for s in samples]),
        video_grid_thw=_cat([s.video_grid_thw for s in samples]),
        second_per_grid_ts=_cat([s.second_per_grid_ts for s in samples]),
        pixel_values=_cat([s.pixel_values for s in samples]),
        image_grid_thw=_cat([s.image_grid_thw for s in samples]),
        sample_ids=[s.id for s in samples],
        counters=dict(counters),
    )


def _placeholder(pad_id: int) -> Sample:
    """A one-token, label-free, unsupervised text sample: the body of a batch whose records all failed."""
    one = torch.ones(1, dtype=torch.long)
    return Sample(
        id="",
        input_ids=one * pad_id,
        attention_mask=one,
        labels=one * IGNORE_INDEX,
        mm_token_type_ids=one * 0,
        rows=Rows.empty(),
    )
