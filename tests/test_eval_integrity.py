"""Evaluation as documented: bad answers skipped, duplicate ids refused, the stub judge, failed judging
exits non-zero, run dirs keyed by the evaluated model, sources from the data config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_fixtures import compose_eval, expected_scores
from module_fixtures import tiny_module

from swim.data.schema import RecordError
from swim.eval.judge import DIMENSIONS
from swim.eval.results import read_jsonl
from swim.eval.tasks import run, task_sources
from swim.model.export import export_hf

REPO = Path(__file__).resolve().parents[1]


def fast(*overrides: str) -> tuple[str, ...]:
    return ("generation.batch_size=2", "task.max_new_tokens=4", *overrides)


def one_source(name: str, path: Path, eval_demo: Path) -> str:
    return f"task.sources=[{{name: {name}, path: {path}, video_root: {eval_demo}}}]"


def edited_bench(eval_demo: Path, tmp_path: Path, kind: str, edit) -> Path:
    records = json.loads((eval_demo / "annotations" / f"{kind}.json").read_text())[:3]
    edit(records)
    path = tmp_path / f"{kind}_edited.json"
    path.write_text(json.dumps(records))
    return path


def test_sources_default_to_the_data_config(eval_demo, eval_cache):
    names = {
        task: [source["name"] for source in task_sources(compose_eval(eval_demo, eval_cache, f"task={task}"))]
        for task in ("bench_q", "bench_d", "grounding", "visualize")
    }
    assert names == {
        "bench_q": ["bench_q", "bench_q_nlrefer"],
        "bench_d": ["bench_d", "bench_d_nlrefer"],
        "grounding": ["bench_q_nlrefer", "bench_d_nlrefer", "val_nl_refer_d"],
        "visualize": ["val_nl_refer_d"],
    }
    cfg = compose_eval(eval_demo, eval_cache, "task=bench_q", "~data.bench.sources", "+data.bench.sources={}")
    with pytest.raises(
        ValueError, match=r"task=bench_q: no source with format bench_q in data.bench.sources"
    ):
        task_sources(cfg)


def test_a_bad_bench_q_answer_is_a_counted_skip_unless_strict(eval_demo, eval_cache, tmp_path):
    def break_answer(records):
        records[1]["Answer"] = "(Z) none of these"

    path = edited_bench(eval_demo, tmp_path, "bench_q", break_answer)
    source = one_source("edited", path, eval_demo)
    with pytest.raises(RecordError, match=r"bench_q_edited.json: record 1: field Answer: bad_answer"):
        run(compose_eval(eval_demo, eval_cache, "task=bench_q", source, *fast()), tmp_path / "strict")
    report = run(
        compose_eval(eval_demo, eval_cache, "task=bench_q", source, "strict=false", *fast()),
        tmp_path / "lenient",
    )
    assert report.metrics["edited/questions"] == 3 and report.metrics["edited/skipped"] == 1
    assert (
        report.metrics["edited/skipped_now/bad_answer"] == 1 and report.metrics["edited/generated_now"] == 2
    )
    rows = read_jsonl(tmp_path / "lenient" / "bench_q" / "edited.jsonl")
    assert [row.get("error") for row in rows].count("bad_answer") == 1


def test_duplicate_ids_are_an_error_naming_both_records(eval_demo, eval_cache, tmp_path):
    def duplicate(records):
        records[2]["id"] = records[0]["id"]

    path = edited_bench(eval_demo, tmp_path, "bench_q", duplicate)
    cfg = compose_eval(
        eval_demo, eval_cache, "task=bench_q", one_source("dup", path, eval_demo), "strict=false", *fast()
    )
    with pytest.raises(
        ValueError, match=r"bench_q_edited.json record 0 and by .*bench_q_edited.json record 2"
    ):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "bench_q").exists()


def test_stub_judge_runs_the_real_client_with_retries_cache_and_resume(
    eval_demo, eval_cache, tmp_path, monkeypatch
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the stub needs no key
    first = run(
        compose_eval(eval_demo, eval_cache, "task=bench_d", "task.judge=stub", *fast()), tmp_path / "a"
    )
    for source in ("bench_d", "bench_d_nlrefer"):
        predictions = read_jsonl(tmp_path / "a" / "bench_d" / f"{source}.predictions.jsonl")
        judged = {
            row["id"]: row for row in read_jsonl(tmp_path / "a" / "bench_d" / f"{source}.judgements.jsonl")
        }
        assert [judged[row["id"]]["scores"] for row in predictions] == [
            expected_scores(row["reply"]) for row in predictions
        ]
        assert first.metrics[f"{source}/judged"] == 2

    # Faults rehearse the retries; the replies cached by the first run are not asked for again.
    faults = "task.judge.stub_faults=[malformed,http500,out_of_range]"
    stub = (
        "task.judge.base_url=stub",
        "task.judge.model=swim-stub-judge",
        "task.judge.backoff_s=0.01",
        faults,
    )
    retried = run(compose_eval(eval_demo, eval_cache, "task=bench_d", *stub, *fast()), tmp_path / "b")
    assert retried.metrics["bench_d/judge_requests_cached"] == 2
    fresh_cache = tmp_path / "fresh_cache"
    retried = run(compose_eval(eval_demo, fresh_cache, "task=bench_d", *stub, *fast()), tmp_path / "c")
    rows = read_jsonl(tmp_path / "c" / "bench_d" / "bench_d.judgements.jsonl")
    failures = [failure for row in rows for failure in row["failures"]]
    assert any("malformed" in f for f in failures) and any("HTTP 500" in f for f in failures)
    assert all(row["scores"] is not None for row in rows)

    # Interrupted mid-write: the last judgement is half a line; the rerun judges only that one.
    path = tmp_path / "c" / "bench_d" / "bench_d_nlrefer.judgements.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:25])
    resumed = run(
        compose_eval(eval_demo, fresh_cache, "task=bench_d", *stub[:3], "task.judge.stub_faults=[]", *fast()),
        tmp_path / "c",
    )
    assert resumed.metrics["bench_d_nlrefer/judged_now"] == 1 and resumed.metrics["bench_d/judged_now"] == 0
    assert resumed.metrics["bench_d_nlrefer/judged"] == 2
    for key in (*DIMENSIONS, "average"):
        assert resumed.metrics[f"bench_d_nlrefer/{key}"] == retried.metrics[f"bench_d_nlrefer/{key}"]


UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: connection refused
NO_JUDGE = (
    "task=bench_d",
    "limit=1",
    f"task.judge.base_url={UNREACHABLE}",
    "task.judge.api_key_env=SWIM_TEST_JUDGE_KEY",
    "task.judge.max_attempts=2",
    "task.judge.backoff_s=0.01",
    *fast(),
)


def test_a_run_where_every_judgement_failed_is_an_error_naming_the_url(
    eval_demo, eval_cache, tmp_path, monkeypatch
):
    monkeypatch.setenv("SWIM_TEST_JUDGE_KEY", "none")
    with pytest.raises(
        RuntimeError, match=r"every judgement failed \(2 descriptions\): the judge at .*127.0.0.1:9/v1"
    ):
        run(compose_eval(eval_demo, eval_cache, *NO_JUDGE), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # the report is still written
    assert metrics["bench_d/judge_failed"] == 1 and metrics["bench_d/judged"] == 0


@pytest.mark.slow
def test_evaluate_py_exits_non_zero_when_every_judgement_failed(eval_demo, eval_cache, tmp_path):
    places = [
        f"demo.dir={eval_demo}",
        "demo.ensure=false",
        f"paths.cache_dir={eval_cache}",
        f"hydra.run.dir={tmp_path}",
    ]
    overrides = [*NO_JUDGE, *places]
    env = {**os.environ, "SWIM_TEST_JUDGE_KEY": "none", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode != 0
    assert "every judgement failed (2 descriptions)" in done.stderr and UNREACHABLE in done.stderr


def test_a_resumed_dir_is_keyed_by_the_model_it_evaluated(eval_demo, eval_cache, tmp_path):
    exported = export_hf(tiny_module(), tmp_path / "export")
    bench = one_source("q", eval_demo / "annotations" / "bench_q.json", eval_demo)

    def evaluate(run_dir: Path, *overrides: str):
        return run(
            compose_eval(eval_demo, eval_cache, "task=bench_q", bench, "limit=2", *fast(), *overrides),
            run_dir,
        )

    first = evaluate(tmp_path / "a", f"ckpt={exported}")
    assert first.metrics["model_sha256"] and first.metrics["q/generated_now"] == 2
    assert evaluate(tmp_path / "a", f"ckpt={exported}").metrics["q/resumed"] == 2
    with pytest.raises(
        ValueError, match=r"holds the results of ckpt .*export.* but this run evaluates ckpt=null"
    ):
        evaluate(tmp_path / "a")  # ckpt=null after a checkpoint: refused, nothing relabelled
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["model"].endswith("export")

    weights = next(exported.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the same path, other content
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"sha256"):
        evaluate(tmp_path / "a", f"ckpt={exported}")

    (tmp_path / "legacy" / "bench_q").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"without model.json"):
        evaluate(tmp_path / "legacy")
