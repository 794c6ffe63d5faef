"""Qwen2-VL: Qwen2.5-VL's geometry and layout (28 px tokens, one video run), older vision blocks."""

from __future__ import annotations

from transformers import (
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2_vl.modeling_qwen2_vl import eager_attention_forward

from swim.data.spec import VisualSpec
from swim.model.families.base import FamilyAdapter, TinyConfig
from swim.model.tokenizer import QWEN2_5_VL_CHAT_TEMPLATE


def tiny_qwen2_vl_config(tiny: TinyConfig) -> Qwen2VLConfig:
    """A Qwen2-VL config with the real vocabulary and geometry and tiny widths.

    Qwen2-VL's vision blocks are sized by ``embed_dim`` and ``mlp_ratio``; ``hidden_size`` is the
    merger's output (the decoder width).
    """
    tiny.validate()
    if tiny.vision_intermediate_size % tiny.vision_hidden_size:
        raise ValueError(
            f"Qwen2-VL: vision_intermediate_size {tiny.vision_intermediate_size} must be a multiple of "
            f"vision_hidden_size {tiny.vision_hidden_size} (mlp_ratio)"
        )
    return Qwen2VLConfig(
        text_config=tiny.text_config(rope_theta=1e6),
        vision_config=dict(
            depth=tiny.vision_depth,
            embed_dim=tiny.vision_hidden_size,
            mlp_ratio=tiny.vision_intermediate_size // tiny.vision_hidden_size,
            num_heads=tiny.vision_heads,
            hidden_size=tiny.hidden_size,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
        ),
    )


QWEN2_VL = FamilyAdapter(
    name="qwen2_vl",
    model_type="qwen2_vl",
    model_class=Qwen2VLForConditionalGeneration,
    processor_class=Qwen2VLProcessor,
    image_processor_class=Qwen2VLImageProcessor,
    video_processor_class=Qwen2VLVideoProcessor,
    spec=VisualSpec(patch_size=14, merge_size=2, temporal_patch=2, layout="contiguous"),
    chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    tiny_config=tiny_qwen2_vl_config,
    eager_attention=eager_attention_forward,
)
