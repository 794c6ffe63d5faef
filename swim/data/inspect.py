"""The data doctor: validate the configured mixtures (or one annotation file) without a model.

Usage::

    python -m swim.data.inspect                         # the mixtures of conf/train.yaml
    python -m swim.data.inspect data=nl_refer data.root=/data --json report.json
    python -m swim.data.inspect path/to/file.json[l] [--video-root DIR] [--format bench_q]
    python -m swim.data.inspect ... --deep [--limit 200]  # also build every sample (load time)
    python -m swim.data.inspect model=tiny_qwen3_vl --deep   # ... as that model family builds them
    python -m swim.data.inspect path/to/file.json --deep --family qwen3_vl
    python -m swim.data.inspect ... --render 8 --out renders/

Prints, as plain text, the annotation files that are missing (a table, with whether each source
is ``optional``), one line per file that cannot be read as a whole, then per split and source the
records in the file, sampled, kept, rejected by reason (with the first examples of each reason)
and exact duplicates; ``--json FILE`` writes the same as JSON. ``--deep`` builds each kept
record's sample as training would (video header and sampled frames, sampled masks, tag
alignment, tokenisation; ``swim.data.sample.SampleBuilder.build``), counts the load-time failures
by reason (what training counts as ``skipped_records/<reason>``, once per epoch) and sums the
built samples' tag and mask counters (``tags/kept``, ``tag_dropped/no_instance``,
``tag_dropped/no_valid_cell``, ``mask_dropped/empty``, ...); the decoders' own messages on
standard error are silenced meanwhile. Samples are built with the model family's processor and
visual layout (its adapter, ``swim/model/families``: token side, Qwen3-VL's timestamps), the tiny
processor over the shipped tokenizer, so no checkpoint is needed. ``--render N`` draws N samples
spread over each split's mixture (``swim.data.render``). The exit status is 1 when a split keeps
no record or a required file is missing or unreadable.

Config mode composes ``conf/train.yaml`` with the given Hydra overrides and reads ``data.train``,
``data.val`` and ``data.bench`` (``{sources: {name: {...}}}``), ``data.dedupe``, ``data.seed``
and ``data.cache_dir``, and the family from ``model.backbone.family`` (``model=tiny_qwen3_vl``, or
``--family NAME`` for ``model.backbone.family=NAME``); a ``data.demo_dir`` is pointed at the demo
drawn at that family's token side and generated first if missing, as ``train.py`` does. File mode
(a ``.json``/``.jsonl`` path) inspects that file alone: format auto-detected, video root its
folder, sample knobs at their defaults, the family ``--family`` (default ``qwen2_5_vl``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from swim.data.cache import AnnotationFileError
from swim.data.doctor_report import report_lines
from swim.data.mixture import (
    Mixture,
    SourceConfig,
    build_mixture,
    missing_sources,
    source_cache,
    source_configs,
)
from swim.data.records import FORMATS, REJECTION_REASONS
from swim.data.render import render_samples, spread
from swim.data.schema import SampleError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "bench")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
MAX_EXAMPLES = 3


@dataclass
class Plan:
    """What to inspect: sources per split and how to build them.

    ``family`` is the model family whose processor and geometry build the samples of ``--deep``
    and ``--render`` (``None``: the default family, Qwen2.5-VL).
    """

    sources: dict[str, list[SourceConfig]]
    seed: int = 0
    cache_dir: str = ".cache"
    data: dict[str, Any] = field(default_factory=dict)
    demo_dir: str | None = None
    dedupe: bool = False
    family: str | None = None


def plan_from_config(
    overrides: list[str],
    config_dir: Path = CONF_DIR,
    config_name: str = "train",
    family: str | None = None,
) -> Plan:
    """Compose ``config_name`` under ``config_dir`` with Hydra ``overrides`` and read its data config.

    ``family`` adds the override ``model.backbone.family=family``. The plan's family is the
    composed ``model.backbone.family``; a ``data.demo_dir`` moves to the demo drawn at its token
    side (``swim.data.demo.demo_folder``: ``<demo_dir>_32px`` for Qwen3-VL), the sources with it.
    """
    from hydra import compose, initialize_config_dir

    if family is not None:
        overrides = [*overrides, f"model.backbone.family={family}"]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="inspect"):
        cfg = compose(config_name=config_name, overrides=overrides)
    family = OmegaConf.select(cfg, "model.backbone.family", default=None)
    if cfg.data.get("demo_dir"):
        from swim.data.demo import demo_folder

        cfg.data.demo_dir = demo_folder(cfg.data.demo_dir, _adapter(family).spec.token_px)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    sources = {split: source_configs((data.get(split) or {}).get("sources")) for split in SPLITS}
    cache_dir = data.get("cache_dir") or OmegaConf.select(cfg, "paths.cache_dir", default=".cache")
    seed, dedupe = int(data.get("seed", 0)), bool(data.get("dedupe", False))
    return Plan(sources, seed, str(cache_dir), data, data.get("demo_dir"), dedupe, family)


def plan_from_file(args: argparse.Namespace) -> Plan:
    """A one-source plan for ``args.targets[0]`` (an annotation file)."""
    path = Path(args.targets[0])
    source = SourceConfig(
        name=path.stem, path=str(path), format=args.format, sampling=args.sampling, video_root=args.video_root
    )
    family = None if args.family is None else _adapter(args.family).name
    return Plan({"file": [source]}, cache_dir=args.cache_dir or ".cache", dedupe=args.dedupe, family=family)


def inspect_plan(
    plan: Plan, *, deep: bool = False, limit: int | None = None
) -> tuple[dict[str, Any], dict[str, Mixture]]:
    """Build each split's mixture and report it; with ``deep``, build samples and count failures.

    Sources whose file is missing, or cannot be read as a whole, are listed (``missing``,
    ``file_errors``) and left out; the other sources of the split are still inspected.

    Returns:
        The JSON-able report (``splits``: per split the source reports, each with a ``load`` entry
        when ``deep``; ``totals`` per split; ``missing`` and ``file_errors``: one entry per source;
        ``reasons``: the parse-time reason codes explained) and the mixtures by split.
    """
    if plan.demo_dir is not None:
        from swim.data.demo import ensure_demo

        ensure_demo(plan.demo_dir, token_px=_adapter(plan.family).spec.token_px)
    report: dict[str, Any] = {
        "seed": plan.seed,
        "cache_dir": plan.cache_dir,
        "splits": {},
        "totals": {},
        "missing": [],
        "file_errors": [],
    }
    builder = _builder(plan, report) if deep else None
    mixtures: dict[str, Mixture] = {}
    for split, configs in plan.sources.items():
        readable = _readable(split, configs, plan.cache_dir, report)
        if not readable:
            continue
        mixture = build_mixture(
            readable, seed=plan.seed, cache_dir=plan.cache_dir, strict=False, dedupe=plan.dedupe
        )
        mixtures[split] = mixture
        entries = [r.to_dict() for r in mixture.report()]
        if builder is not None:
            with quiet_stderr():
                for entry, indices in zip(entries, mixture.source_ranges().values(), strict=True):
                    entry["load"] = _load_check(mixture, builder, indices, limit)
        report["splits"][split] = entries
        report["totals"][split] = _totals(entries)
    report["reasons"] = REJECTION_REASONS
    return report, mixtures


def _readable(
    split: str, configs: list[SourceConfig], cache_dir: str, report: dict[str, Any]
) -> list[SourceConfig]:
    """The sources of ``split`` whose file exists and reads; the others go to ``report``."""
    missing = missing_sources(configs)
    for config in missing:
        entry = {"split": split, "source": config.name, "path": config.path, "optional": config.optional}
        report["missing"].append(entry)
    readable = []
    for config in configs:
        if config in missing:
            continue
        try:
            source_cache(config, cache_dir=cache_dir)
        except AnnotationFileError as err:
            report["file_errors"].append({"split": split, "source": config.name, "error": str(err)})
            continue
        readable.append(config)
    return readable


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send the process's standard error (FFmpeg's messages from the decoders) to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _adapter(family: str | None) -> Any:
    """The :class:`~swim.model.families.FamilyAdapter` of ``family`` (``None``: the default family).

    Raises:
        ValueError: an unknown family, naming the known ones.
    """
    from swim.model.families import DEFAULT_FAMILY, get_family

    return get_family(family or DEFAULT_FAMILY)


def _builder(plan: Plan, report: dict[str, Any]) -> Any:
    """A :class:`~swim.data.sample.SampleBuilder` with the plan's family's processor and spec.

    Notes the family and its geometry in ``report["family"]`` (``name``, ``token_px``, ``layout``).
    """
    from swim.data.sample import DataConfig, SampleBuilder

    adapter = _adapter(plan.family)
    report["family"] = {
        "name": adapter.name,
        "token_px": adapter.spec.token_px,
        "layout": adapter.spec.layout,
    }
    return SampleBuilder(adapter.build_processor(), DataConfig.from_mapping(plan.data), adapter.spec)


def _load_check(mixture: Mixture, builder: Any, indices: range, limit: int | None) -> dict[str, Any]:
    """Build the samples of ``indices`` (``limit`` spread over them) as training would.

    Returns:
        ``checked``, ``ok``, ``failed`` by reason (the ``skipped_records/<reason>`` training counts),
        ``examples`` per reason, and ``counters``: the built samples' tag and mask counters
        (``tags/kept``, ``tag_dropped/<reason>``, ``mask_dropped/empty``).
    """
    failed: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    chosen = spread(indices, limit)
    for i in chosen:
        try:
            counters.update(builder.build(mixture[i]).counters)
        except SampleError as err:
            reason = err.rejection.reason
            failed[reason] += 1
            bucket = examples.setdefault(reason, [])
            if len(bucket) < MAX_EXAMPLES:
                bucket.append(str(err.rejection))
    return {
        "checked": len(chosen),
        "ok": len(chosen) - sum(failed.values()),
        "failed": dict(failed),
        "examples": examples,
        "counters": dict(sorted(counters.items())),
    }


def _totals(entries: list[dict[str, Any]]) -> dict[str, Any]:
    rejected: Counter[str] = Counter()
    for entry in entries:
        rejected.update(entry["rejected"])
    totals = {
        key: sum(entry[key] for entry in entries) for key in ("in_file", "sampled", "kept", "duplicates")
    }
    totals["rejected"] = dict(rejected)
    if all("load" in entry for entry in entries):
        failed: Counter[str] = Counter()
        counters: Counter[str] = Counter()
        for entry in entries:
            failed.update(entry["load"]["failed"])
            counters.update(entry["load"]["counters"])
        totals["load"] = {
            "checked": sum(entry["load"]["checked"] for entry in entries),
            "ok": sum(entry["load"]["ok"] for entry in entries),
            "failed": dict(failed),
            "counters": dict(sorted(counters.items())),
        }
    return totals


def _is_file_target(targets: list[str]) -> bool:
    files = [t for t in targets if "=" not in t and (t.endswith((".json", ".jsonl")) or Path(t).is_file())]
    if files and (len(targets) > 1):
        raise SystemExit(f"inspect one annotation file, or give Hydra overrides; got {targets}")
    return bool(files)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m swim.data.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="Hydra overrides (key=value), or one .json/.jsonl file")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--deep", action="store_true", help="build every kept sample (load-time checks)")
    parser.add_argument("--limit", type=int, help="with --deep: at most this many samples per source")
    parser.add_argument("--render", type=int, default=0, metavar="N", help="draw N samples per split")
    parser.add_argument("--out", type=Path, help="folder of the --render PNGs")
    parser.add_argument("--video-root", help="file mode: media root (default: the file's folder)")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="file mode: format")
    parser.add_argument("--sampling", default="all", help="file mode: sampling rule (all, first:N, ...)")
    parser.add_argument("--cache-dir", help="file mode: records cache root (default .cache)")
    parser.add_argument(
        "--dedupe", action="store_true", help="file mode: drop exact duplicates (data.dedupe)"
    )
    parser.add_argument(
        "--family",
        help="model family of --deep/--render samples (qwen2_5_vl, qwen2_vl, qwen3_vl); file mode default "
        "qwen2_5_vl, config mode model.backbone.family (this sets it)",
    )
    parser.add_argument("--config-dir", type=Path, default=CONF_DIR, help="config mode: Hydra config folder")
    args = parser.parse_args(argv)
    if args.render and args.out is None:
        parser.error("--render needs --out DIR")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the doctor; returns the process exit status.

    0 when every split keeps records and every required source file exists and reads; 1 otherwise;
    2 for a configuration the doctor cannot use (its one-line reason on standard error).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        plan = (
            plan_from_file(args)
            if _is_file_target(args.targets)
            else plan_from_config(args.targets, args.config_dir, family=args.family)
        )
        report, mixtures = inspect_plan(plan, deep=args.deep, limit=args.limit)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.render:
        builder = _builder(plan, report)
        with quiet_stderr():
            report["renders"] = {
                split: render_samples(mixture, builder, args.render, args.out, split)
                for split, mixture in mixtures.items()
            }
    print("\n".join(report_lines(report)))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"report written to {args.json}")
    empty = [split for split, totals in report["totals"].items() if totals["kept"] == 0]
    if empty:
        print(f"no valid record in: {', '.join(empty)}")
    required = [m for m in report["missing"] if not m["optional"]]
    return 1 if empty or required or report["file_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
