"""Capturing the tagged words' attention over the video at evaluation time.

Two sources of rows: a collated :class:`~swim.data.batch.SwimBatch` (teacher-forced benchmark or
validation samples, rows from the data pipeline), or a free prompt with ``<ins>`` tags and a clip
(``task=predict``), whose tags are aligned to tokens through the tokenizer's character offsets
(``swim.data.chat``). The language model runs without its LM head: only the attention is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, ProcessorMixin

from swim.data.chat import char_span_tokens, render_chat, tokenize_chat
from swim.data.media import VideoClip
from swim.data.schema import Turn
from swim.eval.generate import processor_inputs
from swim.losses import fuse_layers
from swim.model.probe import AttentionProbe, ProbeRequest

VIDEO_PAD = "<|video_pad|>"


@dataclass
class CapturedMaps:
    """Attention of ``R`` rows over their sample's visual tokens.

    Attributes:
        layers: per supervised layer ``(R, K)`` fp32 probabilities (0 at invalid keys).
        fused: ``(R, K)`` the layers fused (``product`` or ``mean``), a distribution per row.
        valid: ``(R, K)`` bool, the row's real visual keys.
    """

    layers: dict[int, Tensor]
    fused: Tensor
    valid: Tensor


@torch.no_grad()
def capture_maps(
    model: PreTrainedModel,
    probe: AttentionProbe,
    inputs: dict[str, Tensor],
    request: ProbeRequest,
    *,
    fusion: str,
) -> CapturedMaps:
    """One forward of the language model (no LM head) with the probe armed for ``request``.

    Args:
        inputs: the model inputs of a batch (``input_ids`` ``(B, L)`` and the visual tensors).
        request: rows ``(R,)`` and keys ``(R, K)`` to capture.
        fusion: how to fuse the layers (``swim.losses.fuse_layers``).
    """
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in inputs.items()}
    request = request.to(device)
    with probe.capture(request) as maps:
        model.model(**inputs, use_cache=False)
    layers = {layer: maps[layer].detach().float().cpu() for layer in probe.layers}
    valid = request.key_valid.cpu()
    fused = fuse_layers(torch.stack([layers[layer] for layer in probe.layers]), valid, fusion)
    return CapturedMaps(layers=layers, fused=fused, valid=valid)


@dataclass
class PromptRows:
    """A tagged prompt ready for capture.

    Attributes:
        inputs: the processor's tensors for the one prompt (``input_ids`` ``(1, L)``, ...).
        request: the rows of every tagged token and the prompt's visual keys.
        phrases: the tagged phrases, in order.
        row_phrase: ``(R,)`` long, the phrase of each row.
        grid: the clip's token grid ``(T, h, w)``.
    """

    inputs: dict[str, Tensor]
    request: ProbeRequest
    phrases: list[str]
    row_phrase: Tensor
    grid: tuple[int, int, int]


def prompt_rows(
    processor: ProcessorMixin,
    prompt: str,
    clip: VideoClip,
    *,
    system_prompt: str | None,
    query: str = "predicting",
) -> PromptRows:
    """Rows for the tagged words of a user prompt shown after ``clip``.

    Raises:
        ValueError: the prompt has no ``<ins>`` tag, or ``query`` is unknown.
        SampleError: malformed tags (reason ``bad_tags``).
    """
    if query not in ("predicting", "token"):
        raise ValueError(f"query={query!r}: expected 'predicting' or 'token'")
    chat = render_chat(
        [Turn("user", prompt, visual_offset=0)],
        processor=processor,
        system_prompt=system_prompt,
        visual="video",
    )
    if not chat.tags:
        raise ValueError(f"prompt {prompt!r} has no <ins>...</ins> tag: nothing to draw a heatmap for")
    ids, offsets, pad_index = tokenize_chat(chat, processor.tokenizer)
    inputs = processor_inputs(processor, [chat.text], [clip], padding_side="right")
    grid_thw = inputs["video_grid_thw"][0]
    grid = (int(grid_thw[0]), int(grid_thw[1]) // 2, int(grid_thw[2]) // 2)
    num_visual = grid[0] * grid[1] * grid[2]
    expanded = inputs["input_ids"][0]
    pad_id = processor.tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    # The placeholder expands to a block (one run, or Qwen3-VL's timestamped runs); keys by token id.
    block = expanded.numel() - len(ids) + 1
    keys = (expanded == pad_id).nonzero().flatten()
    if keys.numel() != num_visual or not bool((keys >= pad_index).all() & (keys < pad_index + block).all()):
        raise RuntimeError("the processor's expansion of the video placeholder differs from the token grid")
    positions, row_phrase = [], []
    for number, tag in enumerate(chat.tags):
        first, last = char_span_tokens(offsets, tag.start, tag.end)
        for token in range(first, last):
            positions.append(token if token < pad_index else token + block - 1)
            row_phrase.append(number)
    token = torch.tensor(positions, dtype=torch.long)
    row_query = token - 1 if query == "predicting" else token
    num_rows = len(positions)
    request = ProbeRequest(
        row_sample=torch.zeros(num_rows, dtype=torch.long),
        row_query=row_query,
        key_index=keys.expand(num_rows, num_visual).clone(),
        key_valid=torch.ones(num_rows, num_visual, dtype=torch.bool),
    )
    return PromptRows(
        inputs=inputs,
        request=request,
        phrases=[tag.phrase for tag in chat.tags],
        row_phrase=torch.tensor(row_phrase, dtype=torch.long),
        grid=grid,
    )


def phrase_maps(maps: Tensor, row_phrase: Tensor, grid: Sequence[int]) -> list[Tensor]:
    """The mean map of each phrase's rows as the token grid.

    Args:
        maps: ``(R, K)`` one map per row (``K >= T*h*w``).
        row_phrase: ``(R,)`` long phrase index of each row (phrases ``0..P-1``, each with rows).
        grid: ``(T, h, w)``.

    Returns:
        ``P`` tensors ``(T, h, w)``.
    """
    t, h, w = (int(v) for v in grid)
    out = []
    for phrase in range(int(row_phrase.max()) + 1 if row_phrase.numel() else 0):
        rows = maps[row_phrase == phrase, : t * h * w]
        out.append(rows.mean(dim=0).view(t, h, w))
    return out
