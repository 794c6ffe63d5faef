"""``task=grounding``: teacher-forced attention of the tagged words, scored against the masks.

Every record with masks and ``<ins>`` tags is built into a sample exactly as for training
(``swim.data.sample.SampleBuilder``, pixel masks on), batched (``swim.data.collate``), and run
through the language model with the probe armed on the supervised rows. For each supervised layer
and for the fused map, each (row, annotated temporal cell) pair is scored with METHOD.md section 6's
metrics (``swim.metrics.grounding.grounding_scores``); pairs are averaged per sample, and each
sample's averages are streamed to JSONL, so a rerun skips finished samples. The overall figure of
a metric is the mean over samples (pairs whose mask is empty have no score and are left out).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from swim.data.batch import SwimBatch
from swim.data.collate import collate
from swim.data.sample import Sample, SampleBuilder
from swim.data.schema import Record, SampleError
from swim.eval.attention import capture_maps
from swim.eval.loading import LoadedModel
from swim.eval.progress import progress_bar
from swim.eval.results import JsonlLog, Table, skip_failed
from swim.losses import pair_groups
from swim.metrics.grounding import grounding_scores, metric_names
from swim.model.probe import AttentionProbe, probe_request

log = logging.getLogger(__name__)


@dataclass
class GroundingStats:
    """One pass: samples scored now, already done, without supervised rows, failed by reason."""

    scored: int = 0
    resumed: int = 0
    without_rows: int = 0
    failed: dict[str, int] = field(default_factory=dict)


def _batch_rows(
    sample_ids: Sequence[str], named_maps: dict[str, torch.Tensor], batch: SwimBatch
) -> list[dict]:
    """The JSONL row of each sample of a batch: per map name, the mean of each metric over its pairs.

    ``named_maps``: per map name (``fused``, ``layer_<k>``) ``(R, K)`` maps of the batch's rows.
    """
    supervision = batch.supervision
    rows = [
        {"id": sample_id, "rows": int((supervision.row_sample == b).sum()), "pairs": 0, "scores": {}}
        for b, sample_id in enumerate(sample_ids)
    ]
    groups = pair_groups(supervision, with_pixel_masks=True)
    for group in groups:
        for b in supervision.row_sample[group.rows].tolist():
            rows[b]["pairs"] += 1
    for name, maps in named_maps.items():
        per_sample: dict[int, list[dict[str, torch.Tensor]]] = {}
        for group in groups:
            scores = grounding_scores(group.gather(maps), group.pixel_masks)
            pair_sample = supervision.row_sample[group.rows]
            for b in torch.unique(pair_sample).tolist():
                chosen = pair_sample == b
                per_sample.setdefault(b, []).append({key: value[chosen] for key, value in scores.items()})
        for b, parts in per_sample.items():
            rows[b]["scores"][name] = {key: _nanmean(torch.cat([p[key] for p in parts])) for key in parts[0]}
    return rows


def _nanmean(values: torch.Tensor) -> float | None:
    defined = values[~torch.isnan(values)]
    return float(defined.mean()) if defined.numel() else None


def evaluate_grounding(
    loaded: LoadedModel,
    probe: AttentionProbe,
    records: Sequence[Record],
    builder: SampleBuilder,
    out: JsonlLog,
    *,
    batch_size: int,
    fusion: str,
    query: str,
    strict: bool,
) -> GroundingStats:
    """Score every record of ``records`` not yet in ``out`` (see the module doc)."""
    stats = GroundingStats()
    pending = [record for record in records if not out.finished(record.id)]
    stats.resumed = len(records) - len(pending)
    pad_id = loaded.processor.tokenizer.pad_token_id
    with progress_bar(f"{out.path.name}: scoring attention", len(pending)) as advance:
        for begin in range(0, len(pending), batch_size):
            samples: list[Sample] = []
            chunk = pending[begin : begin + batch_size]
            for record in chunk:
                try:
                    sample = builder.build(record)
                except SampleError as error:
                    skip_failed(out, record.id, error, stats.failed, strict=strict)
                    continue
                if len(sample.rows) == 0:
                    stats.without_rows += 1
                    out.write({"id": record.id, "rows": 0, "pairs": 0, "scores": {}})
                    continue
                samples.append(sample)
            if samples:
                batch = collate(samples, pad_id)
                request = probe_request(batch.supervision, query=query)
                captured = capture_maps(loaded.model, probe, batch.model_inputs(), request, fusion=fusion)
                named = {"fused": captured.fused, **{f"layer_{k}": v for k, v in captured.layers.items()}}
                for row in _batch_rows([sample.id for sample in samples], named, batch):
                    out.write(row)
                    stats.scored += 1
            advance(len(chunk))
    return stats


def score(rows: Sequence[dict[str, Any]], name: str, layers: Sequence[int]) -> tuple[dict[str, float], Table]:
    """Mean over samples of each metric, per supervised layer and fused.

    Returns:
        Flat metrics ``{name}/grounding/<layer_k|fused>/<metric>`` plus ``{name}/grounding/samples``
        (with pairs), ``/without_rows`` and ``/skipped``, and the table (one line per map).
    """
    metrics: dict[str, float] = {}
    keys = metric_names()
    table_rows = []
    scored = [r for r in rows if "error" not in r and r.get("scores")]
    for map_name in [*(f"layer_{k}" for k in layers), "fused"]:
        line: list[Any] = [map_name.replace("_", " ")]
        for key in keys:
            values = [
                r["scores"][map_name][key]
                for r in scored
                if r["scores"].get(map_name, {}).get(key) is not None
            ]
            mean = sum(values) / len(values) if values else math.nan
            metrics[f"{name}/grounding/{map_name}/{key}"] = mean
            line.append(mean)
        table_rows.append(line)
    metrics[f"{name}/grounding/samples"] = len(scored)
    metrics[f"{name}/grounding/without_rows"] = sum(
        1 for r in rows if "error" not in r and not r.get("scores")
    )
    metrics[f"{name}/grounding/skipped"] = sum(1 for r in rows if "error" in r)
    table = Table(
        title=f"{name}: attention grounding over {len(scored)} samples (mean over samples)",
        columns=["Map", *keys],
        rows=table_rows,
    )
    return metrics, table
