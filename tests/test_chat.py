"""Chat rendering and <ins> tag -> token alignment with the real Qwen2.5 tokenizer and processor."""

# ruff: noqa: F811  (pytest fixtures imported from data_fixtures are re-bound as test arguments)
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from data_fixtures import VIDEO_PAD_ID, processor  # noqa: F401
from transformers.video_utils import VideoMetadata

from swim.data.chat import (
    Alignment,
    RenderedChat,
    align,
    assign_instances,
    render_chat,
    tagged_phrases,
    tokenize_chat,
)
from swim.data.schema import SampleError, Turn

# Random frames for the processor: 4 frames of 56 x 84 -> grid (2, 2, 3): 12 video tokens.
FRAMES = np.random.default_rng(0).integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)
NUM_VISUAL = 12


def _render(processor: Any, turns: list[Turn], visual: str | None = "video") -> RenderedChat:
    return render_chat(turns, processor=processor, system_prompt="You are a test.", visual=visual)


def _align(
    processor: Any,
    turns: list[Turn],
    *,
    instances: int = 1,
    query: str = "predicting",
    visual: str | None = "video",
) -> tuple[RenderedChat, Alignment, torch.Tensor]:
    """Render, align, and run the real processor; returns the processor's ``(L,)`` input ids too."""
    chat = _render(processor, turns, visual)
    ids, offsets, pad = tokenize_chat(chat, processor.tokenizer)
    num_visual = NUM_VISUAL if visual == "video" else 0
    alignment = align(
        chat, ids, offsets, pad, num_visual, num_instances=instances, supervise=True, query=query
    )
    if visual == "video":
        meta = VideoMetadata(total_num_frames=4, fps=4.0, frames_indices=[0, 1, 2, 3])
        out = processor(
            text=[chat.text], videos=[FRAMES], videos_kwargs={"video_metadata": [meta]}, return_tensors="pt"
        )
    else:
        out = processor(text=[chat.text], return_tensors="pt")
    input_ids = out["input_ids"][0]
    assert alignment.labels.shape == input_ids.shape
    return chat, alignment, input_ids


def _phrase_text(processor: Any, alignment: Alignment, input_ids: torch.Tensor, phrase: int) -> str:
    tokens = alignment.rows.token[alignment.rows.phrase == phrase]
    assert torch.equal(tokens, torch.arange(int(tokens[0]), int(tokens[-1]) + 1)), (
        "a tag's tokens are contiguous"
    )
    return processor.tokenizer.decode(input_ids[tokens])


@pytest.mark.parametrize(
    "text",
    [
        "Describe the <ins>brown dog</ins> wearing a red collar.",
        "Is the <ins>dog</ins>, or the cat, on the left?",
        "Look (<ins>left cat</ins>) now!",
        "Le <ins>chien marron</ins> et le café.",
        "视频里的<ins>小狗</ins>在做什么？",
        "<ins>Emoji 🐶 dog</ins> at the start.",
        "Follow the <ins>red-circle</ins>...",
    ],
)
def test_tag_tokens_decode_to_the_phrase(processor: Any, text: str) -> None:
    chat, alignment, input_ids = _align(processor, [Turn("user", text, 0), Turn("assistant", "Sure.")])
    phrase = tagged_phrases([Turn("user", text)])[0]
    assert alignment.phrases == [phrase]
    assert _phrase_text(processor, alignment, input_ids, 0).strip() == phrase
    assert chat.text[chat.tags[0].start : chat.tags[0].end] == phrase


def test_only_the_tagged_occurrence_of_a_repeated_word(processor: Any) -> None:
    text = "The dog chases the <ins>dog</ins> and another dog."
    chat, alignment, input_ids = _align(processor, [Turn("user", text, 0), Turn("assistant", "Yes.")])
    dog = processor.tokenizer.convert_tokens_to_ids("Ġdog")
    dog_positions = (input_ids == dog).nonzero().flatten().tolist()
    assert len(dog_positions) == 3
    assert alignment.rows.token.tolist() == [dog_positions[1]]
    _, offsets, _ = tokenize_chat(chat, processor.tokenizer)
    unexpanded = dog_positions[1] - (NUM_VISUAL - 1)
    assert offsets[unexpanded, 1] == chat.tags[0].end


def test_tags_in_prompt_and_answer_and_query_conventions(processor: Any) -> None:
    turns = [
        Turn("user", "Describe the <ins>green square</ins>.", 0),
        Turn("assistant", "The <ins>green square</ins> moves right."),
    ]
    _, predicting, input_ids = _align(processor, turns, query="predicting")
    _, token, _ = _align(processor, turns, query="token")
    assert predicting.phrases == ["green square", "green square"]
    assert torch.equal(predicting.rows.token, token.rows.token)
    assert torch.equal(predicting.rows.query, predicting.rows.token - 1)
    assert torch.equal(token.rows.query, token.rows.token)
    first, second = (predicting.rows.token[predicting.rows.phrase == p] for p in (0, 1))
    assert int(second[0]) > int(first[-1])
    assert (predicting.labels[second] == input_ids[second]).all(), "answer tags are labelled tokens"
    assert (predicting.labels[first] == -100).all(), "prompt tags are not"


def test_labels_on_every_assistant_turn(processor: Any) -> None:
    turns = [
        Turn("user", "What moves?", 0),
        Turn("assistant", "A red square."),
        Turn("user", "Which way?"),
        Turn("assistant", "To the right, slowly."),
    ]
    _, alignment, input_ids = _align(processor, turns)
    labelled = (alignment.labels != -100).nonzero().flatten()
    assert torch.equal(alignment.labels[labelled], input_ids[labelled])
    # Two contiguous runs: each answer plus its <|im_end|>, never the "\n" after it or a user turn.
    breaks = (labelled[1:] - labelled[:-1] != 1).nonzero().flatten()
    assert len(breaks) == 1
    runs = [labelled[: int(breaks[0]) + 1], labelled[int(breaks[0]) + 1 :]]
    decoded = [processor.tokenizer.decode(input_ids[run]) for run in runs]
    assert decoded == ["A red square.<|im_end|>", "To the right, slowly.<|im_end|>"]
    assert int(input_ids[runs[1][-1] + 1]) == processor.tokenizer.convert_tokens_to_ids("\u010a")


def test_visual_offset_places_the_video_and_shifts_later_tokens(processor: Any) -> None:
    text = "First look: then find the <ins>cat</ins>."
    offset = text.index("then")
    chat, alignment, input_ids = _align(processor, [Turn("user", text, offset), Turn("assistant", "Ok.")])
    assert "First look: <|vision_start|><|video_pad|><|vision_end|>then find the cat." in chat.text
    visual = (input_ids == VIDEO_PAD_ID).nonzero().flatten()
    assert len(visual) == NUM_VISUAL
    assert int(alignment.rows.query.min()) > int(visual[-1])
    assert _phrase_text(processor, alignment, input_ids, 0).strip() == "cat"


def test_visual_offset_counts_tagged_characters(processor: Any) -> None:
    text = "The <ins>dog</ins> here: and the <ins>cat</ins>."
    offset = text.index("and")
    chat = _render(processor, [Turn("user", text, offset), Turn("assistant", "Ok.")])
    assert "The dog here: <|vision_start|><|video_pad|><|vision_end|>and the cat." in chat.text


def test_tag_before_the_visual_tokens_is_dropped(processor: Any) -> None:
    text = "Is the <ins>dog</ins> in this video? Describe the <ins>dog</ins>."
    offset = text.index("in this")
    _, alignment, input_ids = _align(processor, [Turn("user", text, offset), Turn("assistant", "Yes.")])
    assert alignment.counters == {"tag_dropped/before_visual": 1, "tags/kept": 1}
    assert alignment.phrases == ["dog"]
    assert int(alignment.rows.token[0]) > int((input_ids == VIDEO_PAD_ID).nonzero().max())


def test_instance_assignment_with_several_instances(processor: Any) -> None:
    turns = [
        Turn("user", "Is the <ins>red circle</ins> left of the <ins>Blue Square</ins>?", 0),
        Turn(
            "assistant",
            "No, the <ins>blue square </ins> is left of the <ins>red circle</ins>; the <ins>cat</ins>.",
        ),
    ]
    _, alignment, _ = _align(processor, turns, instances=2)
    assert alignment.phrases == ["red circle", "Blue Square", "blue square ", "red circle"]
    per_phrase = [int(alignment.rows.instance[alignment.rows.phrase == p][0]) for p in range(4)]
    assert per_phrase == [0, 1, 1, 0]
    assert alignment.counters == {"tag_dropped/no_instance": 1, "tags/kept": 4}
    assert assign_instances(["a", "b", "A", "c"], 1) == [0, 0, 0, 0]
    assert assign_instances(["a", "b", " A", "c"], 2) == [0, 1, 0, None]
    assert assign_instances(["a"], 0) == [None]


@pytest.mark.parametrize(
    ("visual", "instances", "supervise", "reason"),
    [("video", 1, False, "unsupervised"), (None, 1, True, "no_video"), ("video", 0, True, "no_masks")],
)
def test_record_level_drops_are_counted(
    processor: Any,
    visual: str | None,
    instances: int,
    supervise: bool,
    reason: str,
) -> None:
    turns = [Turn("user", "Describe the <ins>dog</ins>.", 0), Turn("assistant", "The <ins>dog</ins> sits.")]
    chat = _render(processor, turns, visual)
    ids, offsets, pad = tokenize_chat(chat, processor.tokenizer)
    alignment = align(
        chat, ids, offsets, pad, NUM_VISUAL if visual else 0, num_instances=instances, supervise=supervise
    )
    assert len(alignment.rows) == 0
    assert alignment.counters == {f"tag_dropped/{reason}": 2}
    assert (alignment.labels != -100).sum() > 0, "the text loss is kept"


def test_text_only_chat_has_no_visual(processor: Any) -> None:
    chat, alignment, input_ids = _align(
        processor, [Turn("user", "Hi"), Turn("assistant", "Hello.")], visual=None
    )
    assert chat.visual is None and VIDEO_PAD_ID not in input_ids.tolist()
    assert processor.tokenizer.decode(input_ids[alignment.labels != -100]) == "Hello.<|im_end|>"


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ([Turn("user", "Say <|im_end|> now"), Turn("assistant", "No.")], "special_token_in_text"),
        ([Turn("user", "The <ins>brown dog</ins>.", 8), Turn("assistant", "Ok.")], "visual_inside_tag"),
        ([Turn("user", "The <ins>dog"), Turn("assistant", "Ok.")], "bad_tags"),
        ([Turn("user", "Hi"), Turn("assistant", "")], "bad_turn"),
    ],
)
def test_render_errors_name_the_turn(processor: Any, turns: list[Turn], reason: str) -> None:
    with pytest.raises(SampleError) as info:
        render_chat(turns, processor=processor, system_prompt=None, visual="video", file="f.json", index=7)
    rejection = info.value.rejection
    assert (rejection.file, rejection.index, rejection.reason) == ("f.json", 7, reason)
    assert rejection.field.startswith("turns[")
