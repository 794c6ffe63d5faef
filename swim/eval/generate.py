"""Video loading for prompts, and batched greedy generation with left padding.

The frames a prompt shows the model are chosen exactly as for training (METHOD.md section 2:
annotated frames kept, the rest uniform, an even count, Qwen-style resizing to multiples of 28 px),
with the same data-config knobs and the same processor metadata as ``swim.data.sample``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, ProcessorMixin
from transformers.video_utils import VideoMetadata

from swim.data.frames import fit_resolution, sample_frame_indices
from swim.data.masks import annotated_frames
from swim.data.sample import DataConfig
from swim.data.tags import strip_tags
from swim.data.video import open_video, resize_frames

_REGION = re.compile(r"<object(\d+)>\s*<region>")


@dataclass
class Clip:
    """A video as the model will see it.

    Attributes:
        frames: ``(F, H, W, 3)`` uint8, ``F`` even, ``H`` and ``W`` multiples of 28.
        indices: the ``F`` sampled frame indices of the source video.
        num_frames: frames in the source video.
        fps: the source video's frame rate.
    """

    frames: np.ndarray
    indices: list[int]
    num_frames: int
    fps: float

    def metadata(self) -> VideoMetadata:
        """The processor's video metadata (its sampled fps sets ``second_per_grid_ts``)."""
        return VideoMetadata(
            total_num_frames=self.num_frames, fps=self.fps, frames_indices=list(self.indices)
        )


@dataclass
class Prompt:
    """One generation request: an id, the user's text (no tags) and an optional clip."""

    id: str
    text: str
    clip: Clip | None


def load_clip(
    path: str,
    cfg: DataConfig,
    *,
    annotation: Sequence[Mapping[Any, Any]] = (),
    file: str = "?",
    index: int = -1,
) -> Clip:
    """Open ``path`` (mp4 or frame folder), sample and resize its frames like the training data.

    Args:
        annotation: the record's instances (frame -> segmentation); their frames are always sampled.

    Raises:
        SampleError: the video cannot be read or an annotated frame lies outside it (the error names
            the file, record index and field).
    """
    source = open_video(
        path,
        file=file,
        index=index,
        field="video",
        default_fps=cfg.default_fps,
        num_threads=cfg.video_threads,
    )
    annotated: set[int] = set()
    for j, instance in enumerate(annotation):
        annotated.update(
            annotated_frames(
                instance, num_frames=source.num_frames, file=file, index=index, field=f"annotation[{j}]"
            )
        )
    indices = sample_frame_indices(source.num_frames, annotated, cfg.max_frames)
    height, width = fit_resolution(
        source.height,
        source.width,
        len(indices),
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
        total_pixels=cfg.total_pixels,
    )
    frames = resize_frames(source.read(indices), height, width)
    return Clip(frames=frames, indices=indices, num_frames=source.num_frames, fps=source.fps)


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
    clips: Sequence[Clip | None],
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
