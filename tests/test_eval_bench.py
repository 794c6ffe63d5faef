"""Bench-Q and Bench-D end to end with the tiny model on a generated demo bench; resume; judge cache."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import compose_eval, expected_scores, judge_server, make_demo

from swim.data.schema import SampleError
from swim.eval.judge import DIMENSIONS
from swim.eval.letters import answer_letter, parse_letter, parse_options
from swim.eval.results import Table, log_to_wandb, read_jsonl
from swim.eval.tasks import run

KEY_ENV = "SWIM_TEST_JUDGE_KEY"
SECRET = "sk-test-judge-secret-0451"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def bench_q_config(demo, cache, *overrides):
    return compose_eval(
        demo, cache, "task=bench_q", "generation.batch_size=2", "task.max_new_tokens=4", *overrides
    )


def test_bench_q_end_to_end_accuracy_matches_the_answer_key(demo, cache, tmp_path):
    report = run(bench_q_config(demo, cache, "limit=3"), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(report.metrics))
    for source in ("bench_q", "bench_q_nlrefer"):
        raw = json.loads((demo / "annotations" / f"{source}.json").read_text())[:3]
        rows = read_jsonl(tmp_path / "bench_q" / f"{source}.jsonl")
        assert [row["id"] for row in rows] == [str(item["id"]) for item in raw]
        correct = unparseable = 0
        for item, row in zip(raw, rows, strict=True):
            options = parse_options(item["options"])
            assert row["answer"] == answer_letter(item["Answer"], options)
            assert row["prediction"] == parse_letter(row["reply"], options)
            correct += row["prediction"] == row["answer"]
            unparseable += row["prediction"] is None
        assert metrics[f"{source}/questions"] == 3
        assert metrics[f"{source}/accuracy"] == pytest.approx(correct / 3)
        assert metrics[f"{source}/unparseable"] == unparseable
        assert metrics[f"{source}/generated_now"] == 3
    assert "| Overall | 3 |" in (tmp_path / "results.md").read_text()


def test_bench_q_resumes_after_an_interrupted_run(demo, cache, tmp_path):
    one = f"task.sources=[{{name: bench_q, path: {demo}/annotations/bench_q.json, video_root: {demo}}}]"
    run(bench_q_config(demo, cache, "limit=2", one), tmp_path)
    path = tmp_path / "bench_q" / "bench_q.jsonl"
    first = path.read_text()
    with path.open("a") as handle:
        handle.write('{"id": "2", "type": "Basic Qu')  # killed mid-write

    report = run(bench_q_config(demo, cache, "limit=4", one), tmp_path)
    assert report.metrics["bench_q/resumed"] == 2
    assert report.metrics["bench_q/generated_now"] == 2
    assert report.metrics["bench_q/questions"] == 4
    text = path.read_text()
    assert text.startswith(first)
    assert [row["id"] for row in read_jsonl(path)] == ["0", "1", "2", "3"]

    again = run(bench_q_config(demo, cache, "limit=4", one), tmp_path)
    assert again.metrics["bench_q/generated_now"] == 0
    assert path.read_text() == text


def test_unreadable_video_stops_a_strict_run_and_is_counted_otherwise(demo, cache, tmp_path):
    records = json.loads((demo / "annotations" / "bench_q.json").read_text())[:2]
    (tmp_path / "broken.mp4").write_bytes(b"")
    records[1]["video"] = str(tmp_path / "broken.mp4")
    (tmp_path / "bench.json").write_text(json.dumps(records))
    source = f"task.sources=[{{name: broken, path: {tmp_path}/bench.json, video_root: {demo}}}]"
    with pytest.raises(SampleError, match=r"bench.json: record 1: field video: empty_file"):
        run(bench_q_config(demo, cache, source), tmp_path / "strict")
    report = run(bench_q_config(demo, cache, source, "strict=false"), tmp_path / "lenient")
    assert report.metrics["broken/skipped"] == 1 and report.metrics["broken/questions"] == 2
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "lenient" / "bench_q" / "broken.jsonl")}
    assert rows[str(records[1]["id"])]["error"] == "empty_file"
    assert "error" not in rows[str(records[0]["id"])]
    rerun = run(bench_q_config(demo, cache, source, "strict=false"), tmp_path / "lenient")
    assert rerun.metrics["broken/resumed"] == 1  # the failed one is tried again, not taken as done


def test_tables_go_to_wandb_offline(tmp_path):
    table = Table("demo: accuracy", ["Type", "Accuracy"], [["Overall", 0.5]])
    log_to_wandb(
        [table], {"demo/accuracy": 0.5}, {"project": "swim-test", "mode": "offline", "dir": str(tmp_path)}
    )
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (saved,) = (runs[0] / "files" / "media" / "table" / "tables").glob("demo: accuracy_*.table.json")
    assert json.loads(saved.read_text()) == {"columns": ["Type", "Accuracy"], "data": [["Overall", 0.5]]}


def bench_d_config(demo, cache, url, *overrides):
    return compose_eval(
        demo,
        cache,
        "task=bench_d",
        "generation.batch_size=2",
        "task.max_new_tokens=4",
        f"task.judge.base_url={url}",
        "task.judge.model=fake-judge",
        f"task.judge.api_key_env={KEY_ENV}",
        "task.judge.timeout_s=2",
        "task.judge.backoff_s=0.01",
        "task.judge.backoff_max_s=0.05",
        "task.judge.concurrency=2",
        *overrides,
    )


def test_bench_d_with_a_local_judge_retries_and_caches(demo, cache, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with judge_server() as server:
        server.slow_s = 3.0
        server.faults.extend(["malformed", "slow", "http500", "out_of_range"])
        first = run(bench_d_config(demo, cache, server.url), tmp_path / "first")
        sent = len(server.requests)
        pairs = {
            (row["reply"], row["caption"])
            for source in ("bench_d", "bench_d_nlrefer")
            for row in read_jsonl(tmp_path / "first" / "bench_d" / f"{source}.predictions.jsonl")
        }
        assert sent >= len(pairs) + 4  # each distinct description once (cache), each fault one more
        assert all(auth == f"Bearer {SECRET}" for auth in server.authorizations)

        for source in ("bench_d", "bench_d_nlrefer"):
            predictions = read_jsonl(tmp_path / "first" / "bench_d" / f"{source}.predictions.jsonl")
            judged = {
                row["id"]: row
                for row in read_jsonl(tmp_path / "first" / "bench_d" / f"{source}.judgements.jsonl")
            }
            assert len(predictions) == 2 and set(judged) == {row["id"] for row in predictions}
            expected = [expected_scores(row["reply"]) for row in predictions]
            for row in predictions:
                assert judged[row["id"]]["scores"] == expected_scores(row["reply"])
            for key in DIMENSIONS:
                mean = sum(scores[key] for scores in expected) / len(expected)
                assert first.metrics[f"{source}/{key}"] == pytest.approx(mean)
            average = sum(first.metrics[f"{source}/{key}"] for key in DIMENSIONS) / 4
            assert first.metrics[f"{source}/average"] == pytest.approx(average)
            assert first.metrics[f"{source}/judged"] == 2 and first.metrics[f"{source}/judge_failed"] == 0
        failures = [
            failure
            for source in ("bench_d", "bench_d_nlrefer")
            for row in read_jsonl(tmp_path / "first" / "bench_d" / f"{source}.judgements.jsonl")
            for failure in row["failures"]
        ]
        for kind in ("malformed reply: not JSON", "timeout", "HTTP 500", "0 to 5"):
            assert any(kind in failure for failure in failures), (kind, failures)

        rerun = run(bench_d_config(demo, cache, server.url), tmp_path / "second")
        assert len(server.requests) == sent
        assert rerun.metrics["bench_d/judge_requests_cached"] == 2
        for source in ("bench_d", "bench_d_nlrefer"):
            for key in (*DIMENSIONS, "average"):
                assert rerun.metrics[f"{source}/{key}"] == first.metrics[f"{source}/{key}"]

        resumed = run(bench_d_config(demo, cache, server.url), tmp_path / "first")
        assert len(server.requests) == sent
        assert resumed.metrics["bench_d/generated_now"] == 0 and resumed.metrics["bench_d/judged_now"] == 0
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="ignore"), path
