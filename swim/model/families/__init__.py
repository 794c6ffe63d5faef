"""Model families behind one adapter: ``model.backbone.family`` picks one (Qwen2.5-VL by default).

Each family module builds its :class:`~swim.model.families.base.FamilyAdapter`; nothing outside
``swim/model`` names a family's classes, and the data pipeline reads only the adapter's plain
:class:`~swim.data.spec.VisualSpec`.
"""

from __future__ import annotations

from torch import nn

from swim.model.families.base import FamilyAdapter, TinyConfig
from swim.model.families.qwen2_5_vl import QWEN2_5_VL
from swim.model.families.qwen2_vl import QWEN2_VL
from swim.model.families.qwen3_vl import QWEN3_VL

DEFAULT_FAMILY = "qwen2_5_vl"
FAMILIES: dict[str, FamilyAdapter] = {f.name: f for f in (QWEN2_5_VL, QWEN2_VL, QWEN3_VL)}


def get_family(name: str) -> FamilyAdapter:
    """The adapter of ``model.backbone.family=name``, or a clear error."""
    if name not in FAMILIES:
        raise ValueError(f"model.backbone.family={name!r}: expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(model: nn.Module) -> FamilyAdapter:
    """The adapter of a built model, by its ``config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    raise ValueError(f"no model family for config.model_type={model_type!r}; known: {sorted(FAMILIES)}")


__all__ = ["DEFAULT_FAMILY", "FAMILIES", "FamilyAdapter", "TinyConfig", "family_of", "get_family"]
