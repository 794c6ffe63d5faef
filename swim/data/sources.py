"""Mixture source configs: one annotation file each, keyed by name in the config, and sampling rules.

A split's ``sources`` in ``conf/data/*.yaml`` is a mapping keyed by source name (so one source is
dropped with ``'~data.train.sources.llava_video'`` or set to ``null``); a list of configs with
``name`` fields is accepted too (:func:`source_configs`). A source whose file does not exist is a
:class:`MissingSourceError` naming it, unless it is marked ``optional: true``
(``swim.data.mixture.build_mixture`` then leaves it out with a warning). Sampling rules are
described in ``swim.data.mixture``.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from swim.data.records import FORMATS

_RULE = re.compile(r"^(all)$|^(first|end|random):(\d+(?:\.\d+)?)(%?)$")


@dataclass
class SourceConfig:
    """One source of a mixture (a mapping under ``data.<split>.sources`` in the config).

    Attributes:
        name: unique name within the mixture, used in reports and ``Record.source``.
        path: the annotation file (``.json`` array or ``.jsonl``).
        format: ``auto`` (detected per record) or one of ``nl_refer``, ``llava_video``,
            ``bench_q``, ``bench_d``.
        video_root: folder that relative media paths are resolved against; default the file's folder.
        sampling: ``all``, ``first:N``, ``end:N`` or ``random:N``; N may be a percentage.
        supervise: attention supervision for this source's records (False: text loss only).
        weight: relative per-record draw weight for a weighted sampler.
        optional: a missing file leaves the source out with a warning instead of an error.
    """

    name: str
    path: str
    format: str = "auto"
    video_root: str | None = None
    sampling: str = "all"
    supervise: bool = True
    weight: float = 1.0
    optional: bool = False

    @classmethod
    def from_any(cls, value: SourceConfig | dict[str, Any]) -> SourceConfig:
        """A config from a dataclass or a mapping (e.g. an OmegaConf node turned into a dict)."""
        if isinstance(value, SourceConfig):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"source {value.get('name', '?')!r}: unknown keys {unknown}; expected {sorted(known)}"
            )
        return cls(
            **{
                key: (str(v) if key in ("path", "video_root") and v is not None else v)
                for key, v in value.items()
            }
        )

    def validate(self) -> None:
        if self.format != "auto" and self.format not in FORMATS:
            raise ValueError(
                f"source {self.name!r}: format={self.format!r}; expected 'auto' or one of {FORMATS}"
            )
        parse_sampling(self.sampling, 1, seed=0, name=self.name)
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ValueError(f"source {self.name!r}: weight={self.weight!r}; expected a finite number >= 0")


class MissingSourceError(FileNotFoundError):
    """A (non-optional) mixture source whose annotation file does not exist."""

    def __init__(self, config: SourceConfig):
        super().__init__(
            f"data source {config.name!r}: annotation file {config.path} does not exist "
            "(fix its path, drop the source, or mark it optional: true to skip it)"
        )
        self.config = config


SourcesLike = Mapping[str, Any] | Sequence[SourceConfig | Mapping[str, Any]]


def source_configs(sources: SourcesLike | None) -> list[SourceConfig]:
    """The source configs of a split, in order, from a mapping keyed by name or a list.

    A mapping entry takes its key as ``name`` (an explicit ``name`` must agree); ``null`` entries
    are dropped.

    Raises:
        ValueError: an entry that is not a mapping, a name that disagrees with its key, unknown keys.
    """
    if sources is None:
        return []
    if isinstance(sources, Mapping):
        configs = []
        for name, entry in sources.items():
            if entry is None:
                continue
            if not isinstance(entry, Mapping):
                raise ValueError(f"source {name!r}: expected a mapping of SourceConfig fields, got {entry!r}")
            if entry.get("name", name) != name:
                raise ValueError(f"source {name!r}: its name field says {entry['name']!r}; drop one of them")
            configs.append(SourceConfig.from_any({**entry, "name": str(name)}))
        return configs
    return [SourceConfig.from_any(s if isinstance(s, SourceConfig) else dict(s)) for s in sources]


def missing_sources(configs: Sequence[SourceConfig]) -> list[SourceConfig]:
    """The sources whose annotation file does not exist."""
    return [c for c in configs if not Path(c.path).is_file()]


def parse_sampling(rule: str, n: int, *, seed: int, name: str) -> np.ndarray:
    """The positions (``0 <= p < n``, ascending) that sampling ``rule`` picks among ``n`` records.

    Returns:
        ``(K,)`` int64 positions.
    """
    match = _RULE.match(rule.strip()) if isinstance(rule, str) else None
    if match is None:
        raise ValueError(
            f"source {name!r}: sampling={rule!r}; expected all, first:N, end:N or random:N (N or N%)"
        )
    if match.group(1):
        return np.arange(n, dtype=np.int64)
    kind, number, percent = match.group(2), float(match.group(3)), bool(match.group(4))
    if percent and number > 100:
        raise ValueError(f"source {name!r}: sampling={rule!r}; a percentage must be at most 100%")
    if not percent and number != int(number):
        raise ValueError(f"source {name!r}: sampling={rule!r}; a count must be a whole number")
    count = min(n, math.floor(n * number / 100 + 0.5) if percent else int(number))
    if kind == "first":
        return np.arange(count, dtype=np.int64)
    if kind == "end":
        return np.arange(n - count, n, dtype=np.int64)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)
