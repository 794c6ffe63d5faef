"""A mixture of annotation sources: a random-access sequence of validated :class:`Record`.

Each source is one annotation file (JSON array or JSON Lines) with its own format, video root,
sampling rule and attention-supervision switch. Files are validated once into a memory-mapped
Arrow cache (:mod:`swim.data.cache`); the :class:`Mixture` only holds, per source, the cache folder
and the selected rows, so it pickles into dataloader workers in a few kilobytes.

Sampling rules pick among the records of the file, before validation, so the report reads
"in file -> sampled -> kept + rejected":

- ``all``: every record;
- ``first:N`` / ``end:N``: the first / last N records;
- ``random:N``: N records drawn without replacement, kept in file order, deterministic given the
  seed and the source name (different seeds give different draws);
- N may be a percentage of the file, ``random:30%`` (rounded half up); N beyond the file means all.

``weight`` is the source's relative draw weight per record for a weighted sampler
(:meth:`Mixture.sample_weights`); the default sequential or shuffled sampler ignores it.

Exact duplicates (records equal but for their position, after normalisation; across the sources
of one mixture too) are counted per source in the report; with ``dedupe`` only the first copy is
kept.

Source configs, keyed by name in the config, optional sources and the parsing of sampling rules
live in :mod:`swim.data.sources`.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swim.data.cache import RecordStore, build_source_cache, read_status
from swim.data.schema import Record, RecordError, Rejection
from swim.data.sources import (
    MissingSourceError,
    SourceConfig,
    SourcesLike,
    missing_sources,
    parse_sampling,
    source_configs,
)

__all__ = [
    "MissingSourceError",
    "Mixture",
    "SourceConfig",
    "SourceReport",
    "build_mixture",
    "missing_sources",
    "parse_sampling",
    "source_cache",
    "source_configs",
]

log = logging.getLogger(__name__)

EXAMPLES_PER_REASON = 3


@dataclass
class SourceReport:
    """What one source gave: records in the file, sampled, kept, and rejected by reason.

    ``examples`` holds, per reason, the first few rejections as ``str(Rejection)`` lines.
    ``duplicates`` counts the sampled valid records that repeat an earlier record of the mixture
    exactly (dropped, and not in ``kept``, with ``dedupe``); ``duplicate_examples`` names the first.
    """

    name: str
    path: str
    cache: str
    in_file: int
    sampled: int
    kept: int
    rejected: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    duplicates: int = 0
    duplicate_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Source:
    config: SourceConfig
    store: RecordStore
    rows: range | np.ndarray  # (K,) rows of records.arrow in file order; a range when contiguous


class Mixture(Sequence[Record]):
    """The records of several sources, concatenated in config order.

    Holds no records: ``mixture[i]`` reads row ``i`` from the source's memory-mapped cache.
    """

    def __init__(self, sources: list[_Source], reports: list[SourceReport]):
        self._sources = sources
        self._reports = reports
        self._ends = np.cumsum([len(s.rows) for s in sources]).tolist()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, i: int) -> Record:  # type: ignore[override]
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"Mixture indices must be integers, got {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a mixture of {n} records")
        i = int(i) % n
        k = bisect_right(self._ends, i)
        source = self._sources[k]
        row = int(source.rows[i - (self._ends[k - 1] if k else 0)])
        return source.store.get(row, source=source.config.name, supervise=source.config.supervise)

    @property
    def source_names(self) -> list[str]:
        return [s.config.name for s in self._sources]

    def source_ranges(self) -> dict[str, range]:
        """The mixture indices of each source's records, by source name."""
        starts = [0, *self._ends[:-1]]
        return {s.config.name: range(a, b) for s, a, b in zip(self._sources, starts, self._ends, strict=True)}

    def source_of(self, i: int) -> str:
        """The name of the source that mixture index ``i`` belongs to."""
        return self._sources[bisect_right(self._ends, int(i) % len(self))].config.name

    def cache_rows(self) -> list[tuple[Path, range | np.ndarray]]:
        """Per source, in mixture order: its records cache folder and its rows there (``(K,)``)."""
        return [(s.store.folder, s.rows) for s in self._sources]

    def sample_weights(self) -> np.ndarray:
        """``(len,)`` float64: each record's source weight, for a ``WeightedRandomSampler``."""
        return np.concatenate(
            [np.full(len(s.rows), s.config.weight, dtype=np.float64) for s in self._sources]
        )

    def report(self) -> list[SourceReport]:
        """Per source: records in the file, sampled, kept, rejected by reason, first examples."""
        return list(self._reports)


def build_mixture(
    sources: SourcesLike,
    *,
    seed: int,
    cache_dir: str | Path,
    strict: bool,
    check_files: bool = True,
    dedupe: bool = False,
) -> Mixture:
    """Validate (or read from the cache) every source, apply its sampling rule, and mix.

    Args:
        sources: the source configs, in order (see :func:`source_configs`).
        seed: seed of the ``random:`` sampling rules.
        cache_dir: root of the records cache (``<cache_dir>/records/<key>``).
        strict: raise :class:`RecordError` for the first rejected record among the sampled ones
            instead of counting it.
        check_files: stat media paths during validation (part of the cache key).
        dedupe: keep only the first copy of records that are exact duplicates (they are counted
            either way).

    Raises:
        ValueError: a bad source config (duplicate name, unknown format or sampling rule).
        MissingSourceError: a source file that does not exist (not raised for an optional source).
        RecordError: in strict mode, naming file, record index, field and reason.
    """
    configs = source_configs(sources)
    for config in missing_sources(configs):
        if not config.optional:
            raise MissingSourceError(config)
        log.warning("data source %r: %s does not exist; optional, so left out", config.name, config.path)
    configs = [c for c in configs if Path(c.path).is_file()]
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"mixture sources must have unique names; repeated: {duplicates}")
    built, reports = [], []
    first: dict[str, str] = {}  # digest -> "source record i" of its first copy
    for config in configs:
        config.validate()
        path = str(Path(config.path).absolute())
        folder = source_cache(config, cache_dir=cache_dir, check_files=check_files)
        status = read_status(folder)
        picked = parse_sampling(config.sampling, status.num_rows, seed=seed, name=config.name)
        rows = status.column("row").to_numpy()[picked]
        rejected = picked[rows < 0]
        if strict and len(rejected):
            raise RecordError(_rejection(status, int(rejected[0]), path))
        report = _report(config, folder, status, picked, rejected, path)
        copies = _duplicates(config.name, status, picked[rows >= 0], first, report)
        if copies:
            log.warning(
                "source %s: %d exact duplicate record(s), %s (first: %s)",
                config.name,
                len(copies),
                "dropped (data.dedupe)" if dedupe else "kept",
                report.duplicate_examples[0],
            )
        keep = rows >= 0
        if dedupe and copies:
            keep &= ~np.isin(picked, np.asarray(copies, dtype=np.int64))
            report.kept -= len(copies)
        reports.append(report)
        built.append(_Source(config, RecordStore(folder, path), _compact(rows[keep])))
        log.info("source %s: %s", config.name, _summary(report))
    return Mixture(built, reports)


def source_cache(config: SourceConfig, *, cache_dir: str | Path, check_files: bool = True) -> Path:
    """The validated-records cache folder of one source (built on first use; ``swim.data.cache``).

    Raises:
        AnnotationFileError: the file is not a JSON array or JSON Lines as a whole.
    """
    path = Path(config.path).absolute()
    video_root = Path(config.video_root) if config.video_root is not None else path.parent
    return build_source_cache(
        path, fmt=config.format, video_root=video_root, cache_dir=cache_dir, check_files=check_files
    )


def _duplicates(
    name: str, status: Any, valid: np.ndarray, first: dict[str, str], report: SourceReport
) -> list[int]:
    """Positions among ``valid`` (sampled, kept) whose record repeats an earlier one; fills ``report``."""
    digests = status.column("digest").to_pylist()
    indices = status.column("index").to_pylist()
    copies = []
    for position in valid.tolist():
        digest, where = digests[position], f"{name} record {indices[position]}"
        if digest not in first:
            first[digest] = where
            continue
        copies.append(position)
        if len(report.duplicate_examples) < EXAMPLES_PER_REASON:
            report.duplicate_examples.append(
                f"{report.path}: record {indices[position]} repeats {first[digest]}"
            )
    report.duplicates = len(copies)
    return copies


def _compact(rows: np.ndarray) -> range | np.ndarray:
    """``(K,)`` rows as a ``range`` when consecutive (``all``, ``first``, ``end``), else int32."""
    if len(rows) == 0 or rows[-1] - rows[0] == len(rows) - 1:
        return range(int(rows[0]), int(rows[-1]) + 1) if len(rows) else range(0)
    return rows.astype(np.int32)


def _rejection(status: Any, position: int, path: str) -> Rejection:
    values = status.slice(position, 1).to_pylist()[0]
    return Rejection(path, values["index"], values["field"], values["reason"], values["detail"])


def _report(
    config: SourceConfig, folder: Path, status: Any, picked: np.ndarray, rejected: np.ndarray, path: str
) -> SourceReport:
    report = SourceReport(
        name=config.name,
        path=path,
        cache=str(folder),
        in_file=status.num_rows,
        sampled=len(picked),
        kept=len(picked) - len(rejected),
    )
    reasons = status.column("reason").to_pylist() if len(rejected) else []
    for position in rejected.tolist():
        reason = reasons[position]
        report.rejected[reason] = report.rejected.get(reason, 0) + 1
        examples = report.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(str(_rejection(status, position, path)))
    return report


def _summary(report: SourceReport) -> str:
    rejected = ", ".join(f"{reason} {count}" for reason, count in sorted(report.rejected.items()))
    return (
        f"{report.in_file} in file, {report.sampled} sampled, {report.kept} kept"
        + (f", rejected: {rejected}" if rejected else "")
        + (f", {report.duplicates} exact duplicates" if report.duplicates else "")
    )
