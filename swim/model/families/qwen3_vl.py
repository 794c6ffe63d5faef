"""Qwen3-VL: patch 16, merge 2 (32 px tokens), one run per temporal cell after its timestamp, DeepStack.

The video placeholder expands to ``<{t:.1f} seconds><|vision_start|><|video_pad|> x (h*w)<|vision_end|>``
per temporal cell (the processor needs the video's fps: ``video_metadata``); positions come from
``mm_token_type_ids`` with each cell placed like an image, and the MRoPE sections are interleaved.
DeepStack adds the features of ``deepstack_visual_indexes`` vision layers to the hidden states at
the visual positions after decoder layers ``0, 1, ...``. The tiny model's chat template renders a
video as the bare placeholder, so the sequence holds exactly that layout.
"""

from __future__ import annotations

from transformers import (
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen3_vl.modeling_qwen3_vl import eager_attention_forward

from swim.data.spec import VisualSpec
from swim.model.families.base import FamilyAdapter, TinyConfig
from swim.model.tokenizer import QWEN3_VL_CHAT_TEMPLATE


def tiny_qwen3_vl_config(tiny: TinyConfig) -> Qwen3VLConfig:
    """A Qwen3-VL config with the real vocabulary and geometry, DeepStack on, and tiny widths."""
    tiny.validate()
    deepstack = tiny.deepstack_visual_indexes
    if deepstack is None:
        deepstack = list(range(min(3, tiny.vision_depth)))
    bad = [i for i in deepstack if not 0 <= i < tiny.vision_depth]
    if bad or not deepstack:
        raise ValueError(
            f"deepstack_visual_indexes {deepstack}: expected vision layers in 0..{tiny.vision_depth - 1}"
        )
    if len(deepstack) > tiny.num_layers:
        raise ValueError(f"{len(deepstack)} DeepStack features for {tiny.num_layers} decoder layers")
    return Qwen3VLConfig(
        text_config=tiny.text_config(
            rope_theta=5e6, head_dim=tiny.head_dim, rope_extra={"mrope_interleaved": True}
        ),
        vision_config=dict(
            depth=tiny.vision_depth,
            hidden_size=tiny.vision_hidden_size,
            intermediate_size=tiny.vision_intermediate_size,
            num_heads=tiny.vision_heads,
            out_hidden_size=tiny.hidden_size,
            deepstack_visual_indexes=list(deepstack),
            num_position_embeddings=256,
            patch_size=16,
            temporal_patch_size=2,
            spatial_merge_size=2,
        ),
    )


QWEN3_VL = FamilyAdapter(
    name="qwen3_vl",
    model_type="qwen3_vl",
    model_class=Qwen3VLForConditionalGeneration,
    processor_class=Qwen3VLProcessor,
    image_processor_class=Qwen2VLImageProcessor,
    video_processor_class=Qwen3VLVideoProcessor,
    spec=VisualSpec(patch_size=16, merge_size=2, temporal_patch=2, layout="timestamped"),
    chat_template=QWEN3_VL_CHAT_TEMPLATE,
    tiny_config=tiny_qwen3_vl_config,
    eager_attention=eager_attention_forward,
    merger_prefixes=("model.visual.merger.", "model.visual.deepstack_merger_list."),
)
