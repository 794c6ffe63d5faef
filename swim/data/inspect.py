"""The data doctor: validate the configured mixtures (or one annotation file) without a model.

Usage::

    python -m swim.data.inspect                         # the mixtures of conf/train.yaml
    python -m swim.data.inspect data=nl_refer data.root=/data --json report.json
    python -m swim.data.inspect path/to/file.json[l] [--video-root DIR] [--format bench_q]
    python -m swim.data.inspect ... --deep [--limit 200]  # also build every sample (load time)
    python -m swim.data.inspect ... --render 8 --out renders/

Prints, per split and source, the records in the file, sampled, kept and rejected by reason
(with the first examples of each reason) as a rich table; ``--json FILE`` writes the same as JSON.
``--deep`` builds each kept record's sample as training would (video header and sampled frames,
sampled masks, tag alignment, tokenisation; ``swim.data.sample.SampleBuilder.build``) and counts
the load-time failures by reason. ``--render N`` draws N samples spread over each split's mixture:
their sampled frames with the ground-truth masks and the tagged phrases, one PNG per sample.

Config mode composes ``conf/train.yaml`` with the given Hydra overrides and reads ``data.train``,
``data.val`` and ``data.bench`` (``{sources: [...]}``), ``data.seed`` and ``data.cache_dir``; a
``data.demo_dir`` is generated first if missing. File mode (a ``.json``/``.jsonl`` path) inspects
that file alone: format auto-detected, video root its folder, sample knobs at their defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from swim.data.mixture import Mixture, build_mixture
from swim.data.records import FORMATS, REJECTION_REASONS
from swim.data.schema import SampleError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "bench")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
INSTANCE_COLOURS = ((0, 255, 255), (255, 0, 255), (255, 255, 0), (255, 255, 255))
MAX_EXAMPLES = 3


@dataclass
class Plan:
    """What to inspect: sources per split and how to build them."""

    sources: dict[str, list[dict[str, Any]]]
    seed: int = 0
    cache_dir: str = ".cache"
    data: dict[str, Any] = field(default_factory=dict)
    demo_dir: str | None = None


def plan_from_config(overrides: list[str], config_dir: Path = CONF_DIR, config_name: str = "train") -> Plan:
    """Compose ``config_name`` under ``config_dir`` with Hydra ``overrides`` and read its data config."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="inspect"):
        cfg = compose(config_name=config_name, overrides=overrides)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    sources = {split: list((data.get(split) or {}).get("sources") or []) for split in SPLITS}
    cache_dir = data.get("cache_dir") or OmegaConf.select(cfg, "paths.cache_dir", default=".cache")
    return Plan(sources, int(data.get("seed", 0)), str(cache_dir), data, data.get("demo_dir"))


def plan_from_file(args: argparse.Namespace) -> Plan:
    """A one-source plan for ``args.targets[0]`` (an annotation file)."""
    path = Path(args.targets[0])
    source = {"name": path.stem, "path": str(path), "format": args.format, "sampling": args.sampling}
    if args.video_root is not None:
        source["video_root"] = args.video_root
    return Plan({"file": [source]}, cache_dir=args.cache_dir or ".cache")


def inspect_plan(
    plan: Plan, *, deep: bool = False, limit: int | None = None
) -> tuple[dict[str, Any], dict[str, Mixture]]:
    """Build each split's mixture and report it; with ``deep``, build samples and count failures.

    Returns:
        The JSON-able report (``splits``: per split the source reports, each with a ``load`` entry
        when ``deep``; ``totals`` per split; ``reasons``: the parse-time reason codes explained) and
        the mixtures by split.
    """
    if plan.demo_dir is not None:
        from swim.data.demo import ensure_demo

        ensure_demo(plan.demo_dir)
    builder = _builder(plan.data) if deep else None
    report: dict[str, Any] = {"seed": plan.seed, "cache_dir": plan.cache_dir, "splits": {}, "totals": {}}
    mixtures: dict[str, Mixture] = {}
    for split, sources in plan.sources.items():
        if not sources:
            continue
        mixture = build_mixture(sources, seed=plan.seed, cache_dir=plan.cache_dir, strict=False)
        mixtures[split] = mixture
        entries = [r.to_dict() for r in mixture.report()]
        if builder is not None:
            for entry, indices in zip(entries, mixture.source_ranges().values(), strict=True):
                entry["load"] = _load_check(mixture, builder, indices, limit)
        report["splits"][split] = entries
        report["totals"][split] = _totals(entries)
    report["reasons"] = REJECTION_REASONS
    return report, mixtures


def _builder(data: dict[str, Any]) -> Any:
    from swim.data.sample import DataConfig, SampleBuilder
    from swim.model.backbone import build_processor

    return SampleBuilder(build_processor(), DataConfig.from_mapping(data))


def _spread(indices: range, limit: int | None) -> list[int]:
    """``limit`` indices evenly spread over ``indices`` (all of them without a limit)."""
    if limit is None or limit >= len(indices):
        return list(indices)
    return sorted({indices[int(k)] for k in np.linspace(0, len(indices) - 1, limit)})


def _load_check(mixture: Mixture, builder: Any, indices: range, limit: int | None) -> dict[str, Any]:
    failed: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    chosen = _spread(indices, limit)
    for i in chosen:
        try:
            builder.build(mixture[i])
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
    }


def _totals(entries: list[dict[str, Any]]) -> dict[str, Any]:
    rejected: Counter[str] = Counter()
    for entry in entries:
        rejected.update(entry["rejected"])
    totals = {key: sum(entry[key] for entry in entries) for key in ("in_file", "sampled", "kept")}
    totals["rejected"] = dict(rejected)
    if all("load" in entry for entry in entries):
        failed: Counter[str] = Counter()
        for entry in entries:
            failed.update(entry["load"]["failed"])
        totals["load"] = {
            "checked": sum(entry["load"]["checked"] for entry in entries),
            "ok": sum(entry["load"]["ok"] for entry in entries),
            "failed": dict(failed),
        }
    return totals


def render_samples(
    mixture: Mixture, builder: Any, count: int, out: Path, prefix: str
) -> list[dict[str, str]]:
    """Draw ``count`` samples spread over ``mixture`` into ``out/<prefix>_<k>.png``.

    Returns:
        Per sample its record id and either the ``png`` path or the ``error`` that stopped it.
    """
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for k, i in enumerate(_spread(range(len(mixture)), count)):
        record = mixture[i]
        try:
            visual = builder.load_visual(record)
        except SampleError as err:
            done.append({"id": record.id, "error": str(err.rejection)})
            continue
        path = out / f"{prefix}_{k:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', record.id)[-60:]}.png"
        draw_visual(visual, f"{record.source} #{record.index} {record.id}").save(path)
        done.append({"id": record.id, "png": str(path)})
    return done


def draw_visual(visual: Any, title: str, columns: int = 8, tile_height: int = 160) -> Image.Image:
    """A contact sheet of a :class:`swim.data.sample.VisualSample`.

    Sampled frames ``(F, H, W, 3)`` in a grid, each instance's mask tinted and outlined in its colour,
    labelled with the frame index (``*`` marks annotated frames); the header lists the tagged
    phrases and the instance each refers to. Tiles are scaled to ``tile_height`` pixels.
    """
    lines = [title]
    for phrase, instance in zip(visual.phrases, visual.phrase_instance, strict=True):
        lines.append(f'"{phrase}" -> ' + ("no instance" if instance is None else f"instance {instance}"))
    if visual.frames is None:
        lines.append("(text only)")
        frames = np.zeros((1, 28, 28, 3), dtype=np.uint8)
    else:
        frames = visual.frames.astype(np.float32)
        for j, masks in enumerate(visual.masks):
            colour = np.array(INSTANCE_COLOURS[j % len(INSTANCE_COLOURS)], dtype=np.float32)
            frames[masks] = 0.6 * frames[masks] + 0.4 * colour
            frames[_outline(masks)] = colour
        frames = frames.round().astype(np.uint8)
    count, height, width = frames.shape[:3]
    size = (max(1, round(width * tile_height / height)), tile_height)
    cols = min(columns, count)
    rows = -(-count // cols)
    header = 14 * len(lines) + 6
    sheet = Image.new("RGB", (max(cols * (size[0] + 4), 480), header + rows * (size[1] + 18)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for n, line in enumerate(lines):
        draw.text((4, 3 + 14 * n), line, fill=(235, 235, 235))
    for k in range(count):
        x, y = (k % cols) * (size[0] + 4), header + (k // cols) * (size[1] + 18)
        sheet.paste(Image.fromarray(frames[k]).resize(size, Image.Resampling.BILINEAR), (x, y + 14))
        index = visual.frame_indices[k] if k < len(visual.frame_indices) else k
        marked = any(flags[k] for flags in visual.annotated)
        draw.text((x + 2, y + 1), f"f{index}{' *' if marked else ''}", fill=(200, 200, 200))
    return sheet


def _outline(masks: np.ndarray, width: int = 2) -> np.ndarray:
    """``(F, H, W)`` bool: mask pixels within ``width`` pixels of the mask's border."""
    inner = masks.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[:, 1:, :] &= inner[:, :-1, :]
        shrunk[:, :-1, :] &= inner[:, 1:, :]
        shrunk[:, :, 1:] &= inner[:, :, :-1]
        shrunk[:, :, :-1] &= inner[:, :, 1:]
        inner = shrunk
    return masks & ~inner


def print_report(report: dict[str, Any], console: Console) -> None:
    """Per split: a table of counts per source, a table of rejections by reason, first examples."""
    for split, entries in report["splits"].items():
        deep = all("load" in entry for entry in entries)
        table = Table(title=f"data.{split}", title_justify="left")
        for column in ("source", "in file", "sampled", "kept", "rejected", *(["loaded ok"] if deep else [])):
            table.add_column(column, justify="left" if column == "source" else "right")
        total = [{"name": "total", **report["totals"][split]}] if len(entries) > 1 else []
        for entry in [*entries, *total]:
            row = [entry["name"], *(str(entry[k]) for k in ("in_file", "sampled", "kept"))]
            row.append(str(sum(entry["rejected"].values())))
            if deep:
                row.append(f"{entry['load']['ok']}/{entry['load']['checked']}")
            table.add_row(*row)
        console.print(table)
        reasons = Table(title=f"data.{split} rejections", title_justify="left")
        for column in ("source", "when", "reason", "count"):
            reasons.add_column(column, justify="right" if column == "count" else "left")
        examples = []
        for entry in entries:
            load = entry.get("load") or {"failed": {}, "examples": {}}
            for when, counts, lines in (
                ("parse", entry["rejected"], entry["examples"]),
                ("load", load["failed"], load["examples"]),
            ):
                for reason, count in sorted(counts.items(), key=lambda kv: -kv[1]):
                    reasons.add_row(entry["name"], when, reason, str(count))
                    examples.append((entry["name"], reason, lines.get(reason, [])))
        if examples:
            console.print(reasons)
        for name, reason, lines in examples:
            console.print(f"  [bold]{name}[/] {reason}:", highlight=False)
            for line in lines:
                console.print(f"    {line}", style="dim", highlight=False, soft_wrap=True)


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
    parser.add_argument("--config-dir", type=Path, default=CONF_DIR, help="config mode: Hydra config folder")
    args = parser.parse_args(argv)
    if args.render and args.out is None:
        parser.error("--render needs --out DIR")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the doctor; returns the process exit status (0, or 1 when a split keeps no record)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    console = Console()
    plan = (
        plan_from_file(args)
        if _is_file_target(args.targets)
        else plan_from_config(args.targets, args.config_dir)
    )
    report, mixtures = inspect_plan(plan, deep=args.deep, limit=args.limit)
    if args.render:
        builder = _builder(plan.data)
        report["renders"] = {
            split: render_samples(mixture, builder, args.render, args.out, split)
            for split, mixture in mixtures.items()
        }
    print_report(report, console)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        console.print(f"report written to {args.json}")
    empty = [split for split, totals in report["totals"].items() if totals["kept"] == 0]
    if empty:
        console.print(f"[red]no valid record in: {', '.join(empty)}[/]")
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())
