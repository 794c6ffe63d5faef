"""The same number of vision-tower passes on every rank, at the same point of the forward.

DeepSpeed ZeRO-3 gathers a module's partitioned parameters with collectives in its forward hooks,
so every rank must run the same modules in the same order. A Qwen-VL forward embeds the tokens,
runs the vision tower once on the batch's images and once on its videos, then runs the language
model. A rank whose batch lacks one of the two (a text-only batch, or video only while another rank
has images and videos) would skip tower gathers that the other ranks wait in: a hang, or a gloo
"collective mismatch". :func:`balanced_tower_passes` counts the batch's tower passes, agrees on the
largest count over the ranks (at least one, so the tower runs on text-only batches even on a single
process, as DDP with a trainable tower needs), and runs the missing passes on a dummy video right
after the token embedding, where the real passes run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from swim.data.batch import SwimBatch
from swim.model.step import visual_anchor


def tower_passes(batch: SwimBatch) -> int:
    """How many times the backbone's forward runs the vision tower on ``batch`` (images, videos: 0-2)."""
    return int(batch.pixel_values is not None) + int(batch.pixel_values_videos is not None)


def agreed_tower_passes(batch: SwimBatch) -> int:
    """The largest :func:`tower_passes` over all ranks, at least 1 (one ``all_reduce`` when distributed)."""
    passes = max(tower_passes(batch), 1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = torch.tensor([passes], dtype=torch.long, device=batch.input_ids.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        passes = int(count.item())
    return passes


@contextmanager
def balanced_tower_passes(model: nn.Module, batch: SwimBatch) -> Iterator[list[Tensor]]:
    """Run the dummy tower passes that this rank's batch lacks inside the next forward of ``model``.

    Args:
        model: a ``...ForConditionalGeneration`` model of any family.
        batch: the batch the forward inside the block runs on.

    Yields:
        A list that, after the forward, holds one zero scalar (:func:`~swim.model.step.visual_anchor`)
        per dummy pass; empty when the batch's own passes were enough. Add their sum to the loss.
    """
    missing = agreed_tower_passes(batch) - tower_passes(batch)
    anchors: list[Tensor] = []
    if missing == 0:
        yield anchors
        return

    def run_dummies(module: nn.Module, args: Any, output: Tensor) -> None:
        anchors.extend(visual_anchor(model, output.device) for _ in range(missing))

    handle = model.get_input_embeddings().register_forward_hook(run_dummies)
    try:
        yield anchors
    finally:
        handle.remove()
