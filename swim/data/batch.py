"""The batch contract: the one interface that data, model and losses share.

A collated batch is a :class:`SwimBatch`: the processor's tensors, the labels, and the attention
supervision in compact per-row form (:class:`Supervision`). Shapes use

- ``B`` samples, ``L`` padded sequence length,
- ``R`` supervised query rows in the whole batch,
- ``N`` object instances with ground truth in the whole batch,
- per sample ``(T, h, w)``: its video's token grid (temporal cells, token rows, token columns),
  ``h = H / p`` and ``w = W / p`` for resized frames of ``H x W`` pixels, ``p`` the model family's
  token side (``VisualSpec.token_px``: 28 Qwen2/2.5-VL, 32 Qwen3-VL).

**Visual key positions.** Each sample carries ``visual_keys[b]``, a ``(T*h*w,)`` long tensor: the
sequence position of each of its video tokens, in grid order (temporal cell, then row, then
column), so ``visual_keys[b].view(T, h, w)[t, i, j]`` is the column holding token ``(t, i, j)``.
The positions are found by token id, whatever the layout: one run
``[s, s + T*h*w)`` for Qwen2/2.5-VL, or ``T`` runs of ``h*w`` with timestamp text between them for
Qwen3-VL (:mod:`swim.data.spec`). They index the sample's own row of ``input_ids``; a later packed
batch (several samples per row) would add each sample's row and offset, never change this order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor


def contiguous_keys(start: int, grid: tuple[int, int, int] | Sequence[int]) -> Tensor:
    """``(T*h*w,)`` long: the visual keys of one run ``[start, start + T*h*w)`` (Qwen2/2.5-VL)."""
    steps, height, width = (int(v) for v in grid)
    return torch.arange(start, start + steps * height * width, dtype=torch.long)


def check_visual_keys(visual_keys: Sequence[Tensor], grid: Tensor) -> None:
    """Raise unless each sample has ``T*h*w`` increasing keys (naming the first bad sample).

    Args:
        visual_keys: ``B`` tensors ``(K_b,)`` long.
        grid: ``(B, 3)`` long token grids.
    """
    if len(visual_keys) != grid.shape[0]:
        raise ValueError(f"{len(visual_keys)} visual_keys entries for {grid.shape[0]} samples")
    for b, keys in enumerate(visual_keys):
        expected = int(grid[b].prod())
        if keys.numel() != expected:
            raise ValueError(
                f"sample {b}: {keys.numel()} visual keys, expected T*h*w = {expected} "
                f"for grid {grid[b].tolist()}"
            )
        if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
            raise ValueError(f"sample {b}: visual keys are not strictly increasing")


@dataclass
class Supervision:
    """Attention supervision of a batch, compact and per row.

    Attributes:
        row_sample: ``(R,)`` long, batch index of each supervised row.
        row_query: ``(R,)`` long, sequence position of the query row whose attention is supervised
            (the tagged token's position minus one under the ``predicting`` convention, the tagged
            token's own position under ``token``).
        row_token: ``(R,)`` long, sequence position of the tagged token itself.
        row_instance: ``(R,)`` long, index into the batch's instances (``0 <= i < N``).
        row_phrase: ``(R,)`` long, batch-global index of the tagged phrase the row belongs to
            (rows of one multi-token phrase share it).
        visual_keys: ``B`` tensors ``(T*h*w,)`` long, the sequence positions of the sample's video
            tokens in grid order (module docstring); empty ``(0,)`` without video.
        grid: ``(B, 3)`` long, the sample's video token grid ``(T, h, w)``; zeros without video.
        instance_sample: ``(N,)`` long, batch index of each instance's sample.
        cell_masks: ``N`` tensors ``(T, h, w)`` float in [0, 1]: the instance's ground truth per
            temporal cell, area-downsampled to the token grid (``data.cell_rule``: by default the
            union over the cell's annotated frames).
        cell_valid: ``N`` tensors ``(T,)`` bool: whether the cell has ground truth. Invalid
            cells carry zeros and must not be supervised.
        pixel_masks: ``N`` tensors ``(T, H, W)`` float in {0, 1} at the resized frame resolution
            (the video's own with ``data.mask_resolution=original``), or ``None`` when the data
            config does not ask for pixel masks.
        sample_row: ``(B,)`` long, the row of ``input_ids`` holding each sample in a packed batch
            (several samples per row); ``None``: sample ``b`` is row ``b`` (a padded batch). Every
            other position above (``row_query``, ``row_token``, ``visual_keys``) is a column of the
            sample's row, already shifted by the sample's offset in it.
        sample_offset: ``(B,)`` long, the column where each sample starts in its row (packed only).
        sample_length: ``(B,)`` long, each sample's token count (packed only).
    """

    row_sample: Tensor
    row_query: Tensor
    row_token: Tensor
    row_instance: Tensor
    row_phrase: Tensor
    visual_keys: list[Tensor]
    grid: Tensor
    instance_sample: Tensor
    cell_masks: list[Tensor]
    cell_valid: list[Tensor]
    pixel_masks: list[Tensor] | None = None
    sample_row: Tensor | None = None
    sample_offset: Tensor | None = None
    sample_length: Tensor | None = None

    @property
    def num_rows(self) -> int:
        return int(self.row_query.numel())

    @property
    def batch_size(self) -> int:
        return int(self.grid.shape[0])

    def key_table(self) -> tuple[Tensor, Tensor]:
        """The visual keys of every sample as one padded table.

        Returns:
            ``index (B, K)`` long, ``visual_keys[b]`` padded with 0 up to ``K`` (the most visual
            tokens of one sample, 0 without video), and ``valid (B, K)`` bool, True on real keys.
        """
        sizes = torch.tensor([keys.numel() for keys in self.visual_keys], dtype=torch.long)
        num_keys = int(sizes.max()) if sizes.numel() else 0
        device = self.grid.device
        index = torch.zeros(self.batch_size, num_keys, dtype=torch.long, device=device)
        for b, keys in enumerate(self.visual_keys):
            index[b, : keys.numel()] = keys
        valid = torch.arange(num_keys, device=device)[None, :] < sizes.to(device)[:, None]
        return index, valid

    @classmethod
    def empty(cls, batch_size: int) -> Supervision:
        """Supervision with no rows and no instances for a batch of ``batch_size`` samples."""
        none = torch.zeros(0, dtype=torch.long)
        return cls(
            row_sample=none,
            row_query=none,
            row_token=none,
            row_instance=none,
            row_phrase=none,
            visual_keys=[none] * batch_size,
            grid=torch.zeros(batch_size, 3, dtype=torch.long),
            instance_sample=none,
            cell_masks=[],
            cell_valid=[],
        )

    def apply(self, fn: Callable[[Tensor], Tensor]) -> Supervision:
        """A copy with ``fn`` applied to every tensor (lists of tensors included)."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = fn(value)
            elif isinstance(value, list):
                value = [fn(t) for t in value]
            moved[f.name] = value
        return Supervision(**moved)

    def to(self, device: torch.device | str) -> Supervision:
        return self.apply(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Supervision:
        return self.apply(Tensor.pin_memory)


# Keys of the processor's outputs (and the packed position ids) that the Hugging Face forward takes.
MODEL_INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "mm_token_type_ids",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
    "pixel_values",
    "image_grid_thw",
)


@dataclass
class SwimBatch:
    """A collated batch.

    Attributes:
        input_ids: ``(B, L)`` long, right-padded with the tokenizer's pad id.
        attention_mask: ``(B, L)`` long, 1 on real tokens.
        labels: ``(B, L)`` long, -100 everywhere except assistant answer tokens and their
            end-of-turn token, on every assistant turn.
        mm_token_type_ids: ``(B, L)`` long, the processor's modality ids (0 text, 1 image, 2 video).
        pixel_values_videos: ``(P_v, 3*2*14*14)`` video patches of all videos, or ``None``.
        video_grid_thw: ``(V, 3)`` long patch grid of each video (``T, 2h, 2w``), or ``None``.
        second_per_grid_ts: ``(V,)`` float seconds per temporal cell, or ``None``.
        pixel_values: ``(P_i, 3*2*14*14)`` image patches, or ``None``.
        image_grid_thw: ``(I, 3)`` long patch grid of each image, or ``None``.
        supervision: the attention supervision (rows may be empty).
        sample_ids: ``B`` record ids, for logs and error messages.
        counters: events counted while building this batch, e.g. ``{"skipped_records/corrupt_video":
            1, "tag_dropped/no_instance": 2}``; the module sums them over training and logs them.
        placeholder: every record of the batch was skipped: the tensors are one pad token with no
            label and no row (``B = 1``, ``sample_ids`` empty), to be stepped over, never trained on.
        position_ids: ``(4, B, L)`` long for a packed batch (``swim.data.packing``), else ``None``:
            row 0 the text positions, restarting at 0 with every sample (transformers derives
            FlashAttention-2's ``cu_seq_lens`` and the block-causal SDPA / eager mask from it),
            rows 1-3 each sample's own MRoPE temporal / height / width positions. A packed batch
            has no padding; its ``attention_mask`` (all ones) is kept for counting but not passed
            to the model, which detects packing only without one.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    supervision: Supervision
    mm_token_type_ids: Tensor | None = None
    pixel_values_videos: Tensor | None = None
    video_grid_thw: Tensor | None = None
    second_per_grid_ts: Tensor | None = None
    pixel_values: Tensor | None = None
    image_grid_thw: Tensor | None = None
    sample_ids: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    placeholder: bool = False
    position_ids: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def packed(self) -> bool:
        """Several samples per row (``position_ids`` set)."""
        return self.position_ids is not None

    def model_inputs(self) -> dict[str, Tensor]:
        """The keyword arguments of the backbone's ``forward`` (no labels; no mask when packed)."""
        inputs = {key: getattr(self, key) for key in MODEL_INPUT_KEYS}
        if self.packed:
            inputs["attention_mask"] = None
        return {key: value for key, value in inputs.items() if value is not None}

    def apply(self, fn: Callable[[Tensor], Tensor]) -> SwimBatch:
        """A copy with ``fn`` applied to every tensor, the supervision's included."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = fn(value)
            elif isinstance(value, Supervision):
                value = value.apply(fn)
            moved[f.name] = value
        return SwimBatch(**moved)

    def to(self, device: torch.device | str) -> SwimBatch:
        return self.apply(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> SwimBatch:
        """Called by the DataLoader's pin-memory thread (``pin_memory=True`` on a CUDA machine)."""
        return self.apply(Tensor.pin_memory)
