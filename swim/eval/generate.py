"""Batched greedy generation with left padding, and the prompt text a model sees.

A prompt's video is a :class:`~swim.data.media.VideoClip` loaded with
:func:`~swim.data.media.load_video_clip`, so its frames are chosen exactly as for training
(METHOD.md section 2: annotated frames kept, the rest uniform, an even count, Qwen-style resizing to
multiples of 28 px) with the same data-config knobs and the same processor metadata.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, ProcessorMixin

from swim.data.media import VideoClip
from swim.data.tags import strip_tags

_REGION = re.compile(r"<object(\d+)>\s*<region>")


@dataclass
class Prompt:
    """One generation request: an id, the user's text (no tags) and an optional clip."""

    id: str
    text: str
    clip: VideoClip | None


def clean_prompt(text: str, region_text: str = "object {n}") -> str:
    """The text a model sees: ``<ins>`` tags removed, ``<objectN><region>`` written as ``region_text``.

    Stock Qwen2.5-VL has no region input, so the original-form benchmarks name the object by its
    number (``region_text`` formatted with ``n``).
    """
    clean, _ = strip_tags(text)
    return _REGION.sub(lambda match: region_text.format(n=match.group(1)), clean)


def chat_text(processor: ProcessorMixin, text: str, *, video: bool, system_prompt: str | None) -> str:
    """The rendered chat up to the assistant's turn: system, user (video, then text), generation prompt."""
    messages: list[dict] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    content = [{"type": "video"}] if video else []
    content.append({"type": "text", "text": text})
    messages.append({"role": "user", "content": content})
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def processor_inputs(
    processor: ProcessorMixin,
    texts: Sequence[str],
    clips: Sequence[VideoClip | None],
    *,
    padding_side: str = "left",
) -> dict[str, torch.Tensor]:
    """Tokenise rendered chats with their clips into one padded batch.

    All prompts of a batch must agree on having a video or not (the caller groups them).

    Returns:
        The processor's tensors: ``input_ids`` and ``attention_mask`` ``(B, L)``, plus for videos
        ``pixel_values_videos``, ``video_grid_thw`` ``(B, 3)`` and ``second_per_grid_ts`` ``(B,)``.
    """
    with_video = [clip is not None for clip in clips]
    if any(with_video) and not all(with_video):
        raise ValueError("a batch mixes prompts with and without video")
    kwargs: dict = {
        "text": list(texts),
        "padding": True,
        "padding_side": padding_side,
        "return_tensors": "pt",
    }
    if all(with_video):
        kwargs["videos"] = [clip.frames for clip in clips if clip is not None]
        kwargs["videos_kwargs"] = {"video_metadata": [clip.metadata() for clip in clips if clip is not None]}
    return dict(processor(**kwargs))


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    system_prompt: str | None = None,
) -> list[str]:
    """Greedy answers to a batch of prompts, left-padded so every prompt ends where generation starts.

    Returns:
        One decoded answer per prompt (special tokens removed, stripped).
    """
    texts = [
        chat_text(processor, p.text, video=p.clip is not None, system_prompt=system_prompt) for p in prompts
    ]
    inputs = processor_inputs(processor, texts, [p.clip for p in prompts])
    device = next(model.parameters()).device
    inputs = {
        key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()
    }
    tokenizer = processor.tokenizer
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [answer.strip() for answer in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
