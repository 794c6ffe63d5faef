"""The data doctor's plain-text report (``python -m swim.data.inspect``): one table per split.

:func:`report_lines` turns the JSON-able report of :func:`swim.data.inspect.inspect_plan` into
lines: the family the samples were built as (``--deep``, ``--render``), the missing annotation
files, one line per file that cannot be read, then per split its counts, its rejections by reason
(parse and load time), the built samples' tag and mask counters, and the first examples of each.
"""

from __future__ import annotations

from typing import Any


def format_table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A plain-text table: the title, then columns padded to width (first column left-aligned)."""
    widths = [max(len(str(row[k])) for row in [header, *rows]) for k in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            str(v).ljust(w) if k == 0 else str(v).rjust(w)
            for k, (v, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [title, line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows), ""]


def report_lines(report: dict[str, Any]) -> list[str]:
    """The doctor's plain-text report: missing sources, file errors, then per split its tables."""
    lines: list[str] = []
    if "family" in report:
        family = report["family"]
        lines += [
            f"samples built as {family['name']} builds them ({family['token_px']} px tokens, "
            f"{family['layout']} video layout)",
            "",
        ]
    if report["missing"]:
        rows = [
            [m["split"], m["source"], "optional" if m["optional"] else "required", m["path"]]
            for m in report["missing"]
        ]
        lines += format_table("missing annotation files", ["split", "source", "needed", "path"], rows)
    for error in report["file_errors"]:
        lines.append(f"error: data.{error['split']} source {error['source']}: {error['error']}")
    if report["file_errors"]:
        lines.append("")
    for split, entries in report["splits"].items():
        lines += _split_lines(split, entries, report["totals"][split])
    return lines


def _split_lines(split: str, entries: list[dict[str, Any]], totals: dict[str, Any]) -> list[str]:
    deep = all("load" in entry for entry in entries)
    header = [
        "source",
        "in file",
        "sampled",
        "kept",
        "rejected",
        "duplicates",
        *(["loaded ok"] if deep else []),
    ]
    rows = []
    for entry in [*entries, *([{"name": "total", **totals}] if len(entries) > 1 else [])]:
        row = [entry["name"], *(str(entry[k]) for k in ("in_file", "sampled", "kept"))]
        row += [str(sum(entry["rejected"].values())), str(entry["duplicates"])]
        if deep:
            row.append(f"{entry['load']['ok']}/{entry['load']['checked']}")
        rows.append(row)
    lines = format_table(f"data.{split}", header, rows)
    reasons, examples = [], []
    for entry in entries:
        load = entry.get("load") or {"failed": {}, "examples": {}}
        for when, counts, found in (
            ("parse", entry["rejected"], entry["examples"]),
            ("load", load["failed"], load["examples"]),
        ):
            for reason, count in sorted(counts.items(), key=lambda kv: -kv[1]):
                reasons.append([entry["name"], when, reason, str(count)])
                examples.append((entry["name"], reason, found.get(reason, [])))
        if entry["duplicates"]:
            examples.append((entry["name"], "exact duplicates", entry["duplicate_examples"]))
    if reasons:
        lines += format_table(f"data.{split} rejections", ["source", "when", "reason", "count"], reasons)
    if deep:
        counters = [[e["name"], name, str(n)] for e in entries for name, n in e["load"]["counters"].items()]
        if counters:
            lines += format_table(
                f"data.{split} tags and masks (built samples)", ["source", "counter", "count"], counters
            )
    for name, reason, found in examples:
        lines.append(f"  {name} {reason}:")
        lines += [f"    {line}" for line in found]
    return [*lines, *([""] if examples else [])]
