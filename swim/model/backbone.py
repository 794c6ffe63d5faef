"""Backbone factory: a model family's model and processor, either a local checkpoint or a tiny random one.

Nothing here downloads: a pretrained backbone is read from a local folder (``local_files_only``),
and the tiny backbone is built from a config with the real Qwen vocabulary and the family's real
geometry (``swim/model/families``: Qwen2.5-VL by default, Qwen2-VL, Qwen3-VL).

Geometry is owned by the data pipeline (frame sampling and Qwen-style resizing to multiples of the
family's token side, 28 or 32 px), so the processor is built with ``do_resize=False``: it only
normalises and patchifies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from swim.model.families import DEFAULT_FAMILY, FamilyAdapter, TinyConfig, get_family
from swim.model.families.qwen2_5_vl import tiny_qwen2_5_vl_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

__all__ = [
    "DTYPES",
    "BackboneConfig",
    "TinyConfig",
    "build_backbone",
    "build_processor",
    "checkpoint_folder",
    "load_processor",
    "tiny_qwen2_5_vl_config",
]


@dataclass
class BackboneConfig:
    """What ``conf/model/*.yaml`` holds under ``backbone``.

    Attributes:
        family: the model family (``swim.model.families``): ``qwen2_5_vl``, ``qwen2_vl``, ``qwen3_vl``.
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
    family: str = DEFAULT_FAMILY

    def __post_init__(self) -> None:
        get_family(self.family)

    @property
    def adapter(self) -> FamilyAdapter:
        return get_family(self.family)


def build_processor(tokenizer_path: str | Path | None = None, family: str = DEFAULT_FAMILY) -> Any:
    """The family's real processor over the shipped Qwen tokenizer; resizing is left to the data pipeline."""
    return get_family(family).build_processor(tokenizer_path)


def checkpoint_folder(cfg: BackboneConfig) -> str:
    """The local checkpoint folder of a ``pretrained`` backbone, or a clear error."""
    if not cfg.path or not Path(cfg.path).is_dir():
        raise FileNotFoundError(
            f"model.backbone.path={cfg.path!r} is not a local checkpoint folder; download the {cfg.family} "
            "checkpoint yourself and point model.backbone.path at it (swim never downloads weights)"
        )
    return cfg.path


def load_processor(cfg: BackboneConfig) -> Any:
    """The processor of a backbone config, without building the model.

    The datamodule needs it before the module builds its model (which happens inside the trainer,
    for ZeRO-3). Resizing is always left to the data pipeline.
    """
    if cfg.kind == "tiny":
        return cfg.adapter.build_processor(cfg.tokenizer_path)
    if cfg.kind == "pretrained":
        return cfg.adapter.load_processor(checkpoint_folder(cfg))
    raise ValueError(f"model.backbone.kind={cfg.kind!r}: expected 'tiny' or 'pretrained'")


def build_backbone(cfg: BackboneConfig) -> tuple[nn.Module, Any]:
    """Model and processor for a backbone config (tiny random init, or a local checkpoint)."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"model.backbone.dtype={cfg.dtype!r}: expected one of {sorted(DTYPES)}")
    dtype = DTYPES[cfg.dtype]
    processor = load_processor(cfg)
    if cfg.kind == "tiny":
        return cfg.adapter.build_tiny(cfg.tiny, cfg.attn_implementation, dtype), processor
    return cfg.adapter.load_pretrained(checkpoint_folder(cfg), cfg.attn_implementation, dtype), processor
