"""The pieces of one SWIM step: the labelled-only CE, the vision-tower anchor, the step's output.

See :mod:`swim.model.module` for why the anchor and the zero-weighted loss exist (DeepSpeed ZeRO-3
collectives, and Lightning forbidding a skipped backward with several processes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from swim.data.dataset import SKIPPED_PREFIX
from swim.losses import AttentionLossOutput
from swim.losses.fusion import upcast
from swim.model.families import family_of

IGNORE_INDEX = -100


def labelled_cross_entropy(hidden: Tensor, labels: Tensor, lm_head: nn.Module) -> tuple[Tensor, int]:
    """Next-token cross-entropy, with the LM head run only where the next token is labelled.

    Args:
        hidden: ``(B, L, D)`` final hidden states of the base model.
        labels: ``(B, L)`` long, ``-100`` where no loss applies.
        lm_head: ``D -> V`` projection.

    Returns:
        The mean CE over the ``M`` labelled next tokens (a scalar in at least fp32; 0, still
        attached to the LM head, when ``M = 0``) and ``M``. The LM head sees ``(M, D)``, never
        ``(B, L, D)``.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = lm_head(hidden[:, :-1][keep])
    total = F.cross_entropy(upcast(logits), targets[keep], reduction="sum")
    count = int(keep.sum())
    return total / max(count, 1), count


def visual_anchor(model: nn.Module, device: torch.device) -> Tensor:
    """``0 * sum`` of the vision tower's outputs on a dummy video: a zero that ran the tower.

    Args:
        model: a ``...ForConditionalGeneration`` model of any family (its adapter runs the pass,
            DeepStack mergers included).
        device: where the batch lives (the dummy video goes there).

    Returns:
        A scalar (fp32) equal to 0, attached to the tower's graph when the tower trains.
    """
    return family_of(model).dummy_visual_pass(model, device)


@dataclass
class StepOutput:
    """What one forward gives: the losses and the maps.

    Attributes:
        loss: the total loss (scalar).
        text_loss: the CE over labelled tokens.
        num_label_tokens: ``M``, the number of labelled next tokens.
        mask_loss: the attention-mask loss, or ``None`` when the batch has no supervised row.
        attention: the loss module's full output (fused maps, per-layer mass), or ``None``.
        maps: ``{layer: (R, K)}`` (``(R, heads, K)`` with ``keep_heads``) captured maps; empty without rows.
        anchor: the dummy-video tower terms (:mod:`swim.model.tower`), or ``None`` when there were none.
    """

    loss: Tensor
    text_loss: Tensor
    num_label_tokens: int
    mask_loss: Tensor | None
    attention: AttentionLossOutput | None
    maps: dict[int, Tensor]
    anchor: Tensor | None


def zero_weighted_loss(step: StepOutput) -> Tensor:
    """A loss equal to 0 whose backward reaches every parameter the step used, through finite terms only.

    The finite terms (CE, mask loss, tower anchor) enter with weight 0, so their gradients are
    exactly 0. A non-finite CE still enters (through ``nan_to_num``) to keep the LM head in the graph,
    as DDP and DeepSpeed expect; its gradients may then be non-finite (see the module docs).
    """
    terms = [
        t for t in (step.text_loss, step.mask_loss, step.anchor) if t is not None and bool(torch.isfinite(t))
    ]
    if not bool(torch.isfinite(step.text_loss)):
        terms.append(torch.nan_to_num(step.text_loss, nan=0.0, posinf=0.0, neginf=0.0))
    return sum((term * 0.0 for term in terms), start=step.text_loss.new_zeros(()))


def skipped_records(counters: Mapping[str, int], world_size: int) -> dict[str, int]:
    """The ``skipped_records/<reason>`` entries of ``counters``, summed over all ranks.

    Every rank must call it (an object all-gather when ``world_size > 1``); each gets the same totals.
    """
    local = {name: int(n) for name, n in counters.items() if name.startswith(SKIPPED_PREFIX)}
    if world_size <= 1 or not dist.is_available() or not dist.is_initialized():
        return dict(sorted(local.items()))
    gathered: list[dict[str, int] | None] = [None] * world_size
    dist.all_gather_object(gathered, local)
    total: Counter[str] = Counter()
    for part in gathered:
        total.update(part or {})
    return dict(sorted(total.items()))
