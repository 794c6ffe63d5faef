"""Validation grounding of trained runs, split by what each supervised row has read.

Under ``loss.query=predicting`` (the reference's rows) the row of a tagged token is the one before
it, so the row that predicts the first word of a phrase has read none of the phrase. Whether a row
*can* find its referent depends on whether the referring words were read before it: a phrase that
the conversation has already named (an answer tag after an untagged or tagged mention in the
prompt) is ``seen``; a first mention is ``unseen``. This script loads each finished job of a sweep
(its ``checkpoints/last.ckpt`` and its overrides), runs its validation split (or the first
``--limit`` samples of its training split) once, and scores the fused maps of each subset of rows
exactly as the module scores all of them
(:class:`~swim.metrics.grounding.GroundingMetrics`: mean over pairs, then over samples).

Subsets: ``all`` (the module's ``val/pointing_game``); ``seen`` / ``unseen``; ``first`` / ``later``
(the phrase's first tagged token's row vs the others').

``--query token`` (or ``predicting``) scores other rows than the run was trained on: e.g. a
text-only run on the rows that a ``loss.query=token`` run supervises.

    .venv/bin/python benchmarks/grounding_by_row.py logs/ablation/SWEEP [--split train --limit 128]
    .venv/bin/python benchmarks/grounding_by_row.py logs/ablation/SWEEP --query token
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from swim.data.batch import Supervision, SwimBatch
from swim.metrics.grounding import GroundingMetrics, update_from_maps
from swim.train.ablation import load_job
from swim.train.sweep import collect_jobs

SUBSETS = ("all", "seen", "unseen", "first", "later")


def keep_rows(supervision: Supervision, keep: Tensor) -> Supervision:
    """``supervision`` with only the rows where ``keep`` ``(R,)`` bool is true (instances unchanged)."""
    rows = ("row_sample", "row_query", "row_token", "row_instance", "row_phrase")
    return replace(supervision, **{name: getattr(supervision, name)[keep] for name in rows})


def row_subsets(batch: SwimBatch, tokenizer: object) -> dict[str, Tensor]:
    """``{subset: (R,) bool}`` of the batch's supervised rows (names of :data:`SUBSETS`)."""
    supervision = batch.supervision
    seen = torch.zeros(supervision.num_rows, dtype=torch.bool)
    first = torch.zeros(supervision.num_rows, dtype=torch.bool)
    for phrase in supervision.row_phrase.unique():
        rows = (supervision.row_phrase == phrase).nonzero().flatten()
        tokens = supervision.row_token[rows]
        ids = batch.input_ids[int(supervision.row_sample[rows[0]])]
        words = tokenizer.decode(ids[tokens.sort().values]).strip().lower()
        seen[rows] = words in tokenizer.decode(ids[: int(tokens.min())]).lower()
        first[rows[tokens.argmin()]] = True
    everything = torch.ones_like(seen)
    return {"all": everything, "seen": seen, "unseen": ~seen, "first": first, "later": ~first}


def job_grounding(
    job_dir: Path, overrides: list[str], split: str, limit: int | None, query: str | None = None
) -> dict[str, tuple[float, int]]:
    """Per subset, the pointing game of the job's last checkpoint on ``split`` (``val``, or the
    first ``limit`` samples of this seed's first ``train`` epoch) and its number of pairs; ``query``
    (``predicting`` / ``token``) replaces the run's ``loss.query``."""
    _, module, datamodule = load_job(job_dir, overrides, "fit" if split == "train" else "validate")
    if query is not None:
        module.loss_cfg = replace(module.loss_cfg, query=query)
    loader = datamodule.train_dataloader() if split == "train" else datamodule.val_dataloader()
    metrics = {name: GroundingMetrics() for name in SUBSETS}
    seen = 0
    with torch.no_grad():
        for batch in loader:
            if limit is not None and seen >= limit:
                break
            sample_index = seen + torch.arange(batch.batch_size)
            seen += batch.batch_size
            if batch.placeholder or batch.supervision.num_rows == 0:
                continue
            fused = module.forward_losses(batch, capture=True).attention.fused.float()
            for name, keep in row_subsets(batch, module.processor.tokenizer).items():
                if keep.any():
                    rows = keep_rows(batch.supervision, keep)
                    update_from_maps(metrics[name], fused[keep], rows, sample_index)
    result = {}
    for name, metric in metrics.items():
        values = metric.compute()
        result[name] = (float(values["pointing_game"]), int(values["num_pairs"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir of train.py (an ablation's)")
    parser.add_argument("--split", choices=("val", "train"), default="val", help="the split scored")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N samples")
    parser.add_argument(
        "--query", choices=("predicting", "token"), default=None, help="rows scored (default: the run's)"
    )
    parser.add_argument("--jobs", nargs="*", default=None, help="job numbers (default: every finished one)")
    args = parser.parse_args()
    rows = f", {args.query} rows" if args.query else ""
    table = Table(title=f"Pointing game by row ({args.split}{rows}): {args.sweep_dir}")
    table.add_column("job")
    table.add_column("overrides")
    for name in SUBSETS:
        table.add_column(f"{name} (pairs)")
    for job in collect_jobs(args.sweep_dir):
        if job.status != "finished" or (args.jobs is not None and job.job not in args.jobs):
            continue
        scores = job_grounding(args.sweep_dir / job.job, job.overrides, args.split, args.limit, args.query)
        cells = [f"{scores[name][0]:.3f} ({scores[name][1]})" for name in SUBSETS]
        table.add_row(job.job, " ".join(job.overrides), *cells)
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
