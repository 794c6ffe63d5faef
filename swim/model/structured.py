"""Config values to typed dataclasses: Hydra hands the module DictConfigs, the code wants dataclasses."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from swim.losses import LossConfig

T = TypeVar("T")


def to_dataclass(cls: type[T], value: Any, where: str) -> T:
    """Build dataclass ``cls`` from an instance, a mapping or a DictConfig (nested dataclasses too).

    Args:
        cls: the dataclass type.
        value: an instance of ``cls`` (returned as is), ``None`` (the defaults), a mapping or a
            DictConfig of its fields; Hydra's ``_target_`` key is ignored.
        where: the config path, for error messages (e.g. ``model.backbone``).

    Raises:
        TypeError: ``value`` is not a mapping.
        ValueError: ``value`` has keys that are not fields of ``cls``.
    """
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, Mapping):
        raise TypeError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known - {"_target_"})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected a subset of {sorted(known)}")
    kwargs = {}
    for name in known & set(value):
        hint = hints[name]
        field_value = value[name]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            field_value = to_dataclass(hint, field_value, f"{where}.{name}")
        kwargs[name] = field_value
    return cls(**kwargs)


def loss_config(loss: Any, supervised_layers: Sequence[int] | None) -> LossConfig:
    """The loss config from a LossConfig, a mapping, a DictConfig or ``None`` (the defaults).

    Empty ``layers`` fall back to the backbone's ``supervised_layers``: the probe captures these
    layers in validation even when ``mask_weight`` is 0, so a text-only run still reports its
    grounding metrics.
    """
    if isinstance(loss, LossConfig):
        values = dataclasses.asdict(loss)
    elif loss is None:
        values = {}
    elif isinstance(loss, DictConfig):
        values = OmegaConf.to_container(loss, resolve=True)
    elif isinstance(loss, Mapping):
        values = dict(loss)
    else:
        raise TypeError(f"loss: expected a LossConfig or a mapping of its fields, got {type(loss).__name__}")
    if not values.get("layers") and supervised_layers:
        values["layers"] = [int(layer) for layer in supervised_layers]
    return LossConfig.from_mapping(values)
