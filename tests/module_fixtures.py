"""Hand-made SwimBatches, a tiny SwimModule and a CPU trainer for the module and export tests.

Batches are built with the real Qwen2.5-VL processor.

A batch has one sample: a 4-frame 84x84 video of a red square on grey (token grid ``(2, 3, 3)``),
the prompt "Describe the <ins>red square</ins>." with the tagged words supervised, and an answer;
or the same conversation without a video (a text-only batch).
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader
from transformers import Qwen2_5_VLProcessor
from transformers.video_utils import VideoMetadata

from swim.data.batch import Supervision, SwimBatch
from swim.model.module import SwimModule

FRAMES, SIZE = 4, 84
SQUARE = (28, 56)  # pixel rows/cols of the square: token cell (1, 1) of the 3x3 grid
VIDEO_PAD_ID = 151656
ASSISTANT_HEADER = "<|im_start|>assistant\n"


def square_video() -> np.ndarray:
    """``(F, H, W, 3)`` uint8: a red square on grey, static."""
    frames = np.full((FRAMES, SIZE, SIZE, 3), 128, dtype=np.uint8)
    low, high = SQUARE
    frames[:, low:high, low:high] = (220, 30, 30)
    return frames


def conversation(processor: Qwen2_5_VLProcessor, video: bool) -> str:
    user = [{"type": "text", "text": "Describe the red square."}]
    if video:
        user = [{"type": "video"}, *user]
    messages = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": "A red square sits in the middle."},
    ]
    return processor.apply_chat_template(messages, tokenize=False)


def _find(ids: list[int], pattern: list[int], start: int) -> int:
    for i in range(start, len(ids) - len(pattern) + 1):
        if ids[i : i + len(pattern)] == pattern:
            return i
    raise AssertionError(f"token pattern {pattern} not found after position {start}")


def make_batch(
    processor: Qwen2_5_VLProcessor, *, video: bool = True, supervised: bool = True, sample_id: str = "s0"
) -> SwimBatch:
    """One-sample batch; ``supervised`` adds rows for the tagged words "red square" in the prompt."""
    text = conversation(processor, video)
    kwargs = {}
    if video:
        kwargs = {
            "videos": [square_video()],
            "videos_kwargs": {
                "video_metadata": [
                    VideoMetadata(total_num_frames=FRAMES, fps=2.0, frames_indices=list(range(FRAMES)))
                ]
            },
        }
    inputs = processor(text=[text], return_tensors="pt", **kwargs)
    ids = inputs["input_ids"][0].tolist()
    tokenizer = processor.tokenizer
    answer_start = _find(ids, tokenizer.encode(ASSISTANT_HEADER), 0) + len(tokenizer.encode(ASSISTANT_HEADER))
    labels = torch.full_like(inputs["input_ids"], -100)
    end = len(ids) - 1 if ids[-1] != tokenizer.convert_tokens_to_ids("<|im_end|>") else len(ids)
    labels[0, answer_start:end] = inputs["input_ids"][0, answer_start:end]

    supervision = Supervision.empty(1)
    if video:
        thw = inputs["video_grid_thw"][0]
        grid = torch.tensor([[int(thw[0]), int(thw[1]) // 2, int(thw[2]) // 2]])
        supervision.visual_keys = [(inputs["input_ids"][0] == VIDEO_PAD_ID).nonzero().flatten()]
        supervision.grid = grid
    if supervised:
        if not video:
            raise ValueError("supervised rows need a video")
        phrase = tokenizer.encode(" red square")
        first = _find(ids, phrase, 0)
        tokens = torch.arange(first, first + len(phrase))
        t, h, w = (int(v) for v in supervision.grid[0])
        cell = torch.zeros(t, h, w)
        cell[:, 1, 1] = 1.0
        pixel = torch.zeros(t, SIZE, SIZE)
        pixel[:, SQUARE[0] : SQUARE[1], SQUARE[0] : SQUARE[1]] = 1.0
        supervision = Supervision(
            row_sample=torch.zeros(len(tokens), dtype=torch.long),
            row_query=tokens - 1,
            row_token=tokens,
            row_instance=torch.zeros(len(tokens), dtype=torch.long),
            row_phrase=torch.zeros(len(tokens), dtype=torch.long),
            visual_keys=supervision.visual_keys,
            grid=supervision.grid,
            instance_sample=torch.zeros(1, dtype=torch.long),
            cell_masks=[cell],
            cell_valid=[torch.ones(t, dtype=torch.bool)],
            pixel_masks=[pixel],
        )
    return SwimBatch(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        labels=labels,
        supervision=supervision,
        mm_token_type_ids=inputs.get("mm_token_type_ids"),
        pixel_values_videos=inputs.get("pixel_values_videos"),
        video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
        sample_ids=[sample_id],
        counters={"tag_dropped/no_instance": 1} if supervised else {},
    )


def labelled_next_tokens(batch: SwimBatch) -> int:
    """``M``: positions whose next token carries a label."""
    return int((batch.labels[:, 1:] != -100).sum())


def tiny_module(**kwargs) -> SwimModule:
    """A built tiny SwimModule (layers 1-3 supervised, lr 1e-3, constant schedule)."""
    defaults = {
        "backbone": {"kind": "tiny"},
        "loss": {"layers": [1, 2, 3]},
        "optimizer": {"lr": 1e-3},
        "scheduler": {"name": "constant"},
    }
    module = SwimModule(**{**defaults, **kwargs})
    module.configure_model()
    return module


def loader(items: list[SwimBatch]) -> DataLoader:
    """Yields the given batches as they are, in order."""
    return DataLoader(items, batch_size=None, shuffle=False)


def cpu_trainer(max_steps: int, callbacks: list[Callback] | None = None) -> Trainer:
    """A quiet single-process CPU trainer without logger or checkpoints."""
    return Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
    )
