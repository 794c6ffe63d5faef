"""The model side of packed batches: a backbone's MRoPE parameters for the packing collator.

The collator (``swim.data.packing``) computes each packed sample's MRoPE positions itself; they
depend on the model's config, which this reads without building the model (the datamodule exists
before the module builds it). Families: Qwen2.5-VL (video positions scaled by
``vision_config.tokens_per_second``), Qwen2-VL (one position per temporal cell) and Qwen3-VL
(every temporal cell its own run, placed like an image: ``MRope.cell_runs``).
"""

from __future__ import annotations

from transformers import AutoConfig

from swim.data.positions import MRope
from swim.model.backbone import BackboneConfig, checkpoint_folder

PACKING_FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")


def mrope_of(cfg: BackboneConfig) -> MRope:
    """The MRoPE parameters of the backbone ``cfg`` describes (its config only, no weights).

    Raises:
        ValueError: a family without packing support.
    """
    if cfg.family not in PACKING_FAMILIES:
        raise ValueError(
            f"data.packing=true supports model.backbone.family in {PACKING_FAMILIES}, got {cfg.family!r}"
        )
    if cfg.kind == "tiny":
        config = cfg.adapter.tiny_config(cfg.tiny)
    else:
        config = AutoConfig.from_pretrained(checkpoint_folder(cfg), local_files_only=True)
    vision = config.vision_config
    tokens_per_second = getattr(vision, "tokens_per_second", None) if cfg.family == "qwen2_5_vl" else None
    return MRope(
        merge_size=int(vision.spatial_merge_size),
        tokens_per_second=tokens_per_second,
        cell_runs=cfg.adapter.spec.layout == "timestamped",
    )
