"""Backbone factory: Qwen2.5-VL model and processor, either a local checkpoint or a tiny random one.

Nothing here downloads: a pretrained backbone is read from a local folder (``local_files_only``),
and the tiny backbone is built from a config with the real Qwen2.5 vocabulary and the real
Qwen2.5-VL geometry (patch 14, temporal patch 2, spatial merge 2, multimodal rope).

Geometry is owned by the data pipeline (frame sampling and Qwen-style resizing to multiples of
28 px), so the processor is built with ``do_resize=False``: it only normalises and patchifies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from swim.model.tokenizer import load_qwen_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TinyConfig:
    """Sizes of the random-init demo model (real vocabulary and geometry, small widths)."""

    num_layers: int = 4
    hidden_size: int = 128
    intermediate_size: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    mrope_section: list[int] = field(default_factory=lambda: [4, 6, 6])
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_heads: int = 2
    seed: int = 0


@dataclass
class BackboneConfig:
    """What ``conf/model/*.yaml`` holds.

    Attributes:
        kind: ``tiny`` (random init from ``tiny``) or ``pretrained`` (a local checkpoint folder).
        path: checkpoint folder for ``pretrained``; never a hub id that would be downloaded.
        dtype: parameter dtype, one of ``float32``, ``bfloat16``, ``float16``.
        attn_implementation: base attention kernel, ``sdpa``, ``eager`` or ``flash_attention_2``.
        tokenizer_path: folder with tokenizer files for ``tiny``; ``None`` uses the shipped ones.
    """

    kind: str = "tiny"
    path: str | None = None
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    tokenizer_path: str | None = None
    tiny: TinyConfig = field(default_factory=TinyConfig)


def tiny_qwen2_5_vl_config(tiny: TinyConfig) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config with the real vocabulary and geometry and tiny widths."""
    head_dim = tiny.hidden_size // tiny.num_heads
    if sum(tiny.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {tiny.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=151936,
            hidden_size=tiny.hidden_size,
            intermediate_size=tiny.intermediate_size,
            num_hidden_layers=tiny.num_layers,
            num_attention_heads=tiny.num_heads,
            num_key_value_heads=tiny.num_kv_heads,
            max_position_embeddings=32768,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": list(tiny.mrope_section),
            },
        ),
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


def build_processor(tokenizer_path: str | Path | None = None) -> Qwen2_5_VLProcessor:
    """A real ``Qwen2_5_VLProcessor`` over the Qwen2.5 tokenizer; resizing is left to the data pipeline."""
    tokenizer = load_qwen_tokenizer(tokenizer_path)
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(do_resize=False),
        video_processor=Qwen2VLVideoProcessor(
            do_resize=False, do_sample_frames=False, cap_pixels_per_frame=False
        ),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def checkpoint_folder(cfg: BackboneConfig) -> str:
    """The local checkpoint folder of a ``pretrained`` backbone, or a clear error."""
    if not cfg.path or not Path(cfg.path).is_dir():
        raise FileNotFoundError(
            f"model.backbone.path={cfg.path!r} is not a local checkpoint folder; download Qwen2.5-VL "
            "yourself and point model.backbone.path at it (swim never downloads weights)"
        )
    return cfg.path


def load_processor(cfg: BackboneConfig) -> Qwen2_5_VLProcessor:
    """The processor of a backbone config, without building the model.

    The datamodule needs it before the module builds its model (which happens inside the trainer,
    for ZeRO-3). Resizing is always left to the data pipeline.
    """
    if cfg.kind == "tiny":
        return build_processor(cfg.tokenizer_path)
    if cfg.kind == "pretrained":
        processor = Qwen2_5_VLProcessor.from_pretrained(checkpoint_folder(cfg), local_files_only=True)
        processor.image_processor.do_resize = False
        processor.video_processor.do_resize = False
        return processor
    raise ValueError(f"model.backbone.kind={cfg.kind!r}: expected 'tiny' or 'pretrained'")


def build_backbone(cfg: BackboneConfig) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """Model and processor for a backbone config (tiny random init, or a local checkpoint)."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"model.backbone.dtype={cfg.dtype!r}: expected one of {sorted(DTYPES)}")
    dtype = DTYPES[cfg.dtype]
    processor = load_processor(cfg)
    if cfg.kind == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.tiny.seed)
            config = tiny_qwen2_5_vl_config(cfg.tiny)
            config._attn_implementation = cfg.attn_implementation
            model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
        return model, processor
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        checkpoint_folder(cfg),
        dtype=dtype,
        attn_implementation=cfg.attn_implementation,
        local_files_only=True,
    )
    return model, processor
