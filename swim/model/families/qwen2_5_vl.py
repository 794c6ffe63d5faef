"""Qwen2.5-VL (the default family): patch 14, merge 2 (28 px tokens), one contiguous video run."""

from __future__ import annotations

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward

from swim.data.spec import VisualSpec
from swim.model.families.base import FamilyAdapter, TinyConfig
from swim.model.tokenizer import QWEN2_5_VL_CHAT_TEMPLATE


def tiny_qwen2_5_vl_config(tiny: TinyConfig) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config with the real vocabulary and geometry and tiny widths."""
    tiny.validate()
    return Qwen2_5_VLConfig(
        text_config=tiny.text_config(rope_theta=1e6),
        vision_config=dict(
            depth=tiny.vision_depth,
            hidden_size=tiny.vision_hidden_size,
            intermediate_size=tiny.vision_intermediate_size,
            num_heads=tiny.vision_heads,
            out_hidden_size=tiny.hidden_size,
            fullatt_block_indexes=[tiny.vision_depth - 1],
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
        ),
    )


QWEN2_5_VL = FamilyAdapter(
    name="qwen2_5_vl",
    model_type="qwen2_5_vl",
    model_class=Qwen2_5_VLForConditionalGeneration,
    processor_class=Qwen2_5_VLProcessor,
    image_processor_class=Qwen2VLImageProcessor,
    video_processor_class=Qwen2VLVideoProcessor,
    spec=VisualSpec(patch_size=14, merge_size=2, temporal_patch=2, layout="contiguous"),
    chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    tiny_config=tiny_qwen2_5_vl_config,
    eager_attention=eager_attention_forward,
)
