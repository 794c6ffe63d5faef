"""The tokenizer, the chat template and the tiny Qwen2.5-VL backbone with the real processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.video_utils import VideoMetadata

from swim.model.backbone import BackboneConfig, TinyConfig, build_backbone, tiny_qwen2_5_vl_config
from swim.model.tokenizer import QWEN_SPECIAL_IDS, load_qwen_tokenizer, tokenizer_dir


def test_tokenizer_has_real_qwen_vocabulary_and_special_ids():
    tokenizer = load_qwen_tokenizer()
    assert len(tokenizer) >= 151665
    for token, token_id in QWEN_SPECIAL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
    assert tokenizer("Describe the red circle.").input_ids == [74785, 279, 2518, 12671, 13]
    assert (tokenizer_dir() / "tokenizer.json").is_file()


def test_chat_template_renders_qwen2_5_vl_turns():
    tokenizer = load_qwen_tokenizer()
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]},
        {"role": "assistant", "content": "A circle."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What moves?<|im_end|>\n"
        "<|im_start|>assistant\nA circle.<|im_end|>\n"
    )
    image_prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "image"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert image_prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n"
    )


def test_tiny_config_has_real_geometry():
    config = tiny_qwen2_5_vl_config(TinyConfig())
    assert config.vision_config.patch_size == 14
    assert config.vision_config.temporal_patch_size == 2
    assert config.vision_config.spatial_merge_size == 2
    assert config.text_config.vocab_size == 151936
    assert config.text_config.num_hidden_layers >= 4
    assert config.video_token_id == QWEN_SPECIAL_IDS["<|video_pad|>"]
    with pytest.raises(ValueError, match="mrope_section"):
        tiny_qwen2_5_vl_config(TinyConfig(mrope_section=[2, 2, 2]))


def test_tiny_backbone_is_seeded_and_runs_forward_backward_on_a_video():
    model, processor = build_backbone(BackboneConfig())
    again, _ = build_backbone(BackboneConfig())
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(processor, Qwen2_5_VLProcessor)
    for (name, a), (_, b) in zip(model.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(a, b), name

    frames = np.random.default_rng(0).integers(0, 255, size=(4, 112, 168, 3), dtype=np.uint8)
    messages = [
        {
            "role": "user",
            "content": [{"type": "video"}, {"type": "text", "text": "Describe the red circle."}],
        },
        {"role": "assistant", "content": "The red circle moves right."},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    metadata = VideoMetadata(total_num_frames=4, fps=4.0, frames_indices=[0, 1, 2, 3])
    inputs = processor(
        text=[text], videos=[frames], videos_kwargs={"video_metadata": [metadata]}, return_tensors="pt"
    )
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 12]]
    num_video_tokens = int((inputs["input_ids"] == QWEN_SPECIAL_IDS["<|video_pad|>"]).sum())
    assert num_video_tokens == 2 * 4 * 6

    out = model(**inputs, labels=inputs["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.lm_head.weight.grad is not None
    assert model.model.visual.blocks[0].attn.qkv.weight.grad is not None


def test_pretrained_backbone_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_backbone(BackboneConfig(kind="pretrained", path="Qwen/Qwen2.5-VL-7B-Instruct"))
    with pytest.raises(ValueError, match="dtype"):
        build_backbone(BackboneConfig(dtype="float8"))
