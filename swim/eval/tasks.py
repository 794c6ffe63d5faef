"""What ``evaluate.py`` runs: one function per ``task``, all writing into the Hydra run dir.

Layout of a run dir::

    bench_q/<source>.jsonl                 one row per question (reply, parsed letter, key)
    bench_d/<source>.predictions.jsonl     one row per generated description
    bench_d/<source>.judgements.jsonl      one row per judged description
    grounding/<source>.jsonl               one row per sample (metric means per layer and fused)
    heatmaps/*.png                         task=visualize
    prediction.json (+ input.heatmaps)     task=predict
    metrics.json, results.md               flat metrics and the Markdown tables
    model.json                             the evaluated model (``swim.eval.identity``)

Rerunning with ``hydra.run.dir=<that dir>`` resumes: finished ids are skipped. A dir evaluated with
another model is refused. Sources default to the data config's (:func:`task_sources`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from swim.data.mixture import build_mixture
from swim.data.sample import DataConfig, SampleBuilder
from swim.data.schema import Record, RecordError
from swim.eval import bench_d, bench_q, grounding_eval
from swim.eval.bench import GenerationConfig, GenerationStats, generate_records
from swim.eval.identity import claim_run_dir, model_identity
from swim.eval.judge import STUB, Judge, JudgeConfig
from swim.eval.loading import LoadedModel, backbone_config, load_model
from swim.eval.results import JsonlLog, Table, log_to_wandb, skip_failed, write_report
from swim.eval.visualize import draw_samples, phrase_maps_of, predict, select_records
from swim.model.backbone import BackboneConfig
from swim.model.probe import AttentionProbe

log = logging.getLogger(__name__)
TASKS = ("bench_q", "bench_d", "grounding", "visualize", "predict")
DATA_SPLITS = {
    "bench_q": ("bench",),
    "bench_d": ("bench",),
    "grounding": ("bench", "val"),
    "visualize": ("val",),
}
"""The data config's splits whose sources a task evaluates when ``task.sources`` is null."""


@dataclasses.dataclass
class Report:
    """A task's outcome: flat metrics, tables, files worth pointing at, and why it failed (if it did).

    ``error`` set: the report is still written, then :func:`run` raises (``evaluate.py`` exits 1).
    """

    metrics: dict[str, Any]
    tables: list[Table]
    files: list[Path]
    error: str | None = None


def data_config(cfg: DictConfig, **overrides: Any) -> DataConfig:
    """The sample-building knobs of ``cfg.data`` (only those; other keys are not resolved)."""
    values = {f.name: cfg.data[f.name] for f in dataclasses.fields(DataConfig) if f.name in cfg.data}
    values["query"] = cfg.attention.query
    values.update(overrides)
    return DataConfig(**values)


def task_sources(cfg: DictConfig) -> list[dict[str, Any]]:
    """The task's sources: ``task.sources``, or when null the data config's (:data:`DATA_SPLITS`).

    From the data config, ``bench_q`` and ``bench_d`` take the ``data.bench`` sources of their
    format; ``grounding`` the supervised sources of ``data.bench`` and ``data.val``; ``visualize``
    the supervised ``data.val`` sources. A split's ``sources`` may be a list or a mapping by name.

    Raises:
        ValueError: nothing to evaluate (the message says what was looked for).
    """
    name = cfg.task.name
    if cfg.task.get("sources") is not None:
        return list(OmegaConf.to_container(cfg.task.sources, resolve=True))
    found = []
    for split in DATA_SPLITS[name]:
        node = cfg.data.get(split)
        sources = OmegaConf.to_container(node.sources, resolve=True) if node is not None else []
        if isinstance(sources, dict):
            sources = [{"name": key, **value} for key, value in sources.items()]
        for source in sources:
            wanted = (
                source.get("format") == name
                if name in ("bench_q", "bench_d")
                else source.get("supervise", True)
            )
            if wanted:
                found.append(source)
    if not found:
        kind = f"format {name}" if name in ("bench_q", "bench_d") else "supervise: true"
        splits = ", ".join(f"data.{split}.sources" for split in DATA_SPLITS[name])
        raise ValueError(f"task={name}: no source with {kind} in {splits}; set task.sources")
    return found


def _sources(cfg: DictConfig) -> list[tuple[str, list[Record], dict[str, Any]]]:
    """Per source: its name, its records (first ``limit``) and its load counts.

    Raises:
        ValueError: two records of a source share an id (both are named): their rows would collide.
    """
    out = []
    for source in task_sources(cfg):
        mixture = build_mixture([source], seed=cfg.seed, cache_dir=cfg.paths.cache_dir, strict=cfg.strict)
        size = len(mixture) if cfg.limit is None else min(len(mixture), int(cfg.limit))
        report = mixture.report()[0]
        rejected = sum(report.rejected.values())
        if rejected:
            log.warning(
                "source %s: %d records rejected %s: %s",
                report.name,
                rejected,
                report.rejected,
                report.examples,
            )
        counts = {f"{report.name}/rejected": rejected}
        records = [mixture[i] for i in range(size)]
        _check_unique_ids(report.name, records)
        out.append((report.name, records, counts))
    return out


def _check_unique_ids(name: str, records: list[Record]) -> None:
    first: dict[str, Record] = {}
    for record in records:
        key = str(record.id)
        if key in first:
            other = first[key]
            raise ValueError(
                f"source {name}: id {key!r} is used by {other.file} record {other.index} and by "
                f"{record.file} record {record.index}; results are keyed by id, so ids must be unique"
            )
        first[key] = record


def _ensure_demo(cfg: DictConfig) -> None:
    """Generate the demo bench if enabled and some source lives under ``demo.dir``.

    A model family whose token side is not 28 px reads its own demo, ``<demo.dir>_<px>px``
    (``cfg.demo.dir`` is pointed there, so the sources that interpolate it follow).
    """
    if not cfg.demo.ensure:
        return
    from swim.data.demo import demo_folder, ensure_demo

    token_px = _backbone(cfg).adapter.spec.token_px
    cfg.demo.dir = demo_folder(cfg.demo.dir, token_px)
    root = Path(cfg.demo.dir).absolute()
    paths = [Path(source["path"]).absolute() for source in task_sources(cfg)]
    if any(root in path.parents for path in paths):
        ensure_demo(root, seed=cfg.demo.seed, token_px=token_px)


def _backbone(cfg: DictConfig) -> BackboneConfig:
    return backbone_config(OmegaConf.to_container(cfg.model.backbone, resolve=True))


def _generation(cfg: DictConfig) -> GenerationConfig:
    return GenerationConfig(
        batch_size=cfg.generation.batch_size,
        max_new_tokens=cfg.task.max_new_tokens,
        region_text=cfg.generation.region_text,
    )


def _stats(name: str, stats: GenerationStats) -> dict[str, Any]:
    return {
        f"{name}/generated_now": stats.generated,
        f"{name}/resumed": stats.resumed,
        f"{name}/skipped_now": sum(stats.failed.values()),
        **{f"{name}/skipped_now/{reason}": count for reason, count in sorted(stats.failed.items())},
        f"{name}/generation_seconds": round(stats.seconds, 3),
    }


def judge_config(cfg: DictConfig) -> JudgeConfig:
    """``task.judge`` as a :class:`JudgeConfig`; the string ``stub`` is the offline stub judge
    (``swim.eval.judge_stub``) with the default settings and a cache under ``paths.cache_dir``.
    """
    if cfg.task.judge == STUB:
        return JudgeConfig(base_url=STUB, model="swim-stub-judge", cache_dir=f"{cfg.paths.cache_dir}/judge")
    return JudgeConfig(**OmegaConf.to_container(cfg.task.judge, resolve=True))


def run_bench_q(cfg: DictConfig, loaded: LoadedModel, run_dir: Path) -> Report:
    """Multiple-choice accuracy per source (one table each)."""
    gen, data = _generation(cfg), data_config(cfg)
    report = Report({}, [], [])
    for name, records, counts in _sources(cfg):
        path = run_dir / "bench_q" / f"{name}.jsonl"
        with JsonlLog(path) as out:
            bad: dict[str, int] = {}
            answerable = []
            for record in records:
                try:
                    bench_q.options_and_key(record)
                except RecordError as error:
                    skip_failed(out, record.id, error, bad, strict=cfg.strict)
                else:
                    answerable.append(record)
            stats = generate_records(
                loaded,
                answerable,
                lambda r: bench_q.question_prompt(r, cfg.task.prompt, gen.region_text),
                bench_q.answer_row,
                out,
                gen=gen,
                data=data,
                strict=cfg.strict,
            )
            rows = [out.rows[str(r.id)] for r in records]
        metrics, table = bench_q.score(rows, name)
        for reason, count in bad.items():
            stats.failed[reason] = stats.failed.get(reason, 0) + count
        report.metrics.update({**metrics, **counts, **_stats(name, stats)})
        report.tables.append(table)
        report.files.append(path)
    return report


def run_bench_d(cfg: DictConfig, loaded: LoadedModel, run_dir: Path) -> Report:
    """Descriptions per source, judged; one table of the four dimensions and their average each.

    A run in which every judgement failed (no network, a wrong URL) is an error naming the URL.
    """
    gen, data = _generation(cfg), data_config(cfg)
    with Judge(judge_config(cfg)) as judge:
        report = _bench_d_sources(cfg, loaded, run_dir, judge, gen, data)
    judged = sum(v for k, v in report.metrics.items() if k.endswith("/judged"))
    failed = sum(v for k, v in report.metrics.items() if k.endswith("/judge_failed"))
    if failed and not judged:
        report.error = (
            f"every judgement failed ({failed} descriptions): the judge at {judge.url} "
            f"(model {judge.cfg.model!r}) gave no usable reply; see the failures in "
            f"{run_dir / 'bench_d'}/*.judgements.jsonl, then rerun in the same dir to retry them"
        )
    return report


def _bench_d_sources(
    cfg: DictConfig, loaded: LoadedModel, run_dir: Path, judge: Judge, gen: GenerationConfig, data: DataConfig
) -> Report:
    """Generate and judge each source's descriptions (:func:`run_bench_d` without the failure check)."""
    report = Report({}, [], [])
    for name, records, counts in _sources(cfg):
        predictions_path = run_dir / "bench_d" / f"{name}.predictions.jsonl"
        judgements_path = run_dir / "bench_d" / f"{name}.judgements.jsonl"
        with JsonlLog(predictions_path) as predictions:
            stats = generate_records(
                loaded,
                records,
                lambda r: bench_d.description_prompt(r, gen.region_text),
                bench_d.description_row,
                predictions,
                gen=gen,
                data=data,
                strict=cfg.strict,
            )
            with JsonlLog(judgements_path) as judgements:
                judged = bench_d.judge_descriptions(judge, predictions, judgements)
                wanted = {str(r.id) for r in records}
                metrics, table = bench_d.score(
                    [row for key, row in predictions.rows.items() if key in wanted],
                    [row for key, row in judgements.rows.items() if key in wanted],
                    name,
                )
        report.metrics.update({**metrics, **counts, **_stats(name, stats)})
        report.metrics.update(
            {f"{name}/judge_requests_cached": judged.cached, f"{name}/judged_now": judged.judged}
        )
        report.tables.append(table)
        report.files += [predictions_path, judgements_path]
    return report


def run_grounding(cfg: DictConfig, loaded: LoadedModel, run_dir: Path) -> Report:
    """Attention-grounding metrics per supervised layer and fused, per source."""
    builder = SampleBuilder(loaded.processor, data_config(cfg, pixel_masks=True), loaded.spec)
    layers = list(cfg.attention.layers)
    probe = AttentionProbe(loaded.model, layers)
    report = Report({}, [], [])
    try:
        for name, records, counts in _sources(cfg):
            path = run_dir / "grounding" / f"{name}.jsonl"
            with JsonlLog(path) as out:
                stats = grounding_eval.evaluate_grounding(
                    loaded,
                    probe,
                    records,
                    builder,
                    out,
                    batch_size=cfg.task.batch_size,
                    fusion=cfg.attention.fusion,
                    query=cfg.attention.query,
                    strict=cfg.strict,
                )
                rows = [out.rows[str(r.id)] for r in records]
            metrics, table = grounding_eval.score(rows, name, layers)
            report.metrics.update({**metrics, **counts})
            report.metrics.update(
                {
                    f"{name}/grounding/scored_now": stats.scored,
                    f"{name}/grounding/resumed": stats.resumed,
                    f"{name}/grounding/skipped_now": sum(stats.failed.values()),
                }
            )
            report.tables.append(table)
            report.files.append(path)
    finally:
        probe.remove()
    return report


def run_visualize(cfg: DictConfig, loaded: LoadedModel, run_dir: Path) -> Report:
    """Heatmap PNGs of chosen samples; with ``task.before`` set, that model's row above this one's."""
    builder = SampleBuilder(loaded.processor, data_config(cfg, pixel_masks=True), loaded.spec)
    layers, fusion = list(cfg.attention.layers), cfg.attention.fusion
    ids = [str(i) for i in cfg.task.ids] if cfg.task.ids else None
    chosen = [
        (name, select_records(records, builder, ids, cfg.task.num_samples))
        for name, records, _ in _sources(cfg)
    ]
    after = [phrase_maps_of(loaded, records, builder, layers, fusion) for _, records in chosen]
    models: list[list[tuple[str, Any]]] = [[(cfg.task.after_label, maps)] for maps in after]
    if cfg.task.before is not None:
        before_ckpt = None if cfg.task.before == "backbone" else cfg.task.before
        other = load_model(before_ckpt, _backbone(cfg), device=cfg.device)
        for entry, (_, records) in zip(models, chosen, strict=True):
            entry.insert(0, (cfg.task.before_label, phrase_maps_of(other, records, builder, layers, fusion)))
    files = []
    for entry, (name, records) in zip(models, chosen, strict=True):
        files += draw_samples(records, builder, entry, run_dir / "heatmaps", name)
    log.info("wrote %d heatmap figures to %s", len(files), run_dir / "heatmaps")
    return Report({"visualize/figures": len(files)}, [], files)


def run_predict(cfg: DictConfig, loaded: LoadedModel, run_dir: Path) -> Report:
    """One answer about one video, optional heatmaps; ``prediction.json`` in the run dir."""
    if not cfg.input.video or not cfg.input.prompt:
        raise ValueError(
            'task=predict needs input.video=PATH and input.prompt="..." (tags <ins>...</ins> allowed)'
        )
    result = predict(
        loaded,
        str(cfg.input.video),
        str(cfg.input.prompt),
        data_config(cfg),
        max_new_tokens=cfg.task.max_new_tokens,
        heatmaps=cfg.input.heatmaps,
        layers=list(cfg.attention.layers),
        fusion=cfg.attention.fusion,
        query=cfg.attention.query,
    )
    path = run_dir / "prediction.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    table = Table(
        "prediction", ["video", "prompt", "answer"], [[result["video"], result["prompt"], result["answer"]]]
    )
    return Report({"predict/answer": result["answer"]}, [table], [path, *map(Path, result["heatmaps"])])


RUNNERS = {
    "bench_q": run_bench_q,
    "bench_d": run_bench_d,
    "grounding": run_grounding,
    "visualize": run_visualize,
    "predict": run_predict,
}


def run(cfg: DictConfig, run_dir: str | Path) -> Report:
    """Load the model, run ``cfg.task.name``, write ``metrics.json`` and ``results.md``, log to W&B."""
    name = cfg.task.name
    if name not in RUNNERS:
        raise ValueError(f"task={name!r}: expected one of {TASKS}")
    run_dir = Path(run_dir)
    torch.manual_seed(cfg.seed)
    if name != "predict":
        _ensure_demo(cfg)
    identity = model_identity(cfg.ckpt, _backbone(cfg), cfg.seed)
    claim_run_dir(run_dir, identity)
    loaded = load_model(cfg.ckpt, _backbone(cfg), device=cfg.device)
    log.info("task %s on %s", name, loaded.source)
    report = RUNNERS[name](cfg, loaded, run_dir)
    model = {"model": loaded.source, "model_sha256": identity.get("sha256")}
    report.metrics = {"task": name, **model, **report.metrics}
    metrics_path, tables_path = write_report(run_dir, report.metrics, report.tables)
    report.files += [metrics_path, tables_path]
    if cfg.wandb.enabled:
        log_to_wandb(report.tables, report.metrics, OmegaConf.to_container(cfg.wandb, resolve=True))
    if report.error is not None:
        raise RuntimeError(report.error)
    return report
