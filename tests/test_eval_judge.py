"""The Bench-D judge against a local OpenAI-compatible server: parsing, retries, timeouts, cache."""

from __future__ import annotations

import pytest
from eval_fixtures import expected_scores, judge_server

from swim.eval.judge import (
    DIMENSIONS,
    Judge,
    JudgeConfig,
    JudgeFatalError,
    JudgeReplyError,
    judge_messages,
    parse_judgement,
)

KEY_ENV = "SWIM_TEST_JUDGE_KEY"
SECRET = "sk-test-not-a-real-key-5309"


def config(url: str, tmp_path, **overrides) -> JudgeConfig:
    values = dict(
        base_url=url,
        model="fake-judge",
        api_key_env=KEY_ENV,
        timeout_s=2.0,
        max_attempts=4,
        backoff_s=0.01,
        backoff_max_s=0.05,
        concurrency=3,
        cache_dir=str(tmp_path / "cache"),
    )
    values.update(overrides)
    return JudgeConfig(**values)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


GOOD = {key: 3 for key in DIMENSIONS}


@pytest.mark.parametrize(
    "reply",
    [
        '{"subject_correspondence": 3, "appearance_description": 3, "temporal_description": 3, '
        '"hallucination_detection": 3}',
        '```json\n{"subject_correspondence": 3, "appearance_description": 3, "temporal_description": 3, '
        '"hallucination_detection": 3}\n```',
    ],
)
def test_parse_accepts_the_strict_form(reply):
    assert parse_judgement(reply) == GOOD


@pytest.mark.parametrize(
    ("reply", "complaint"),
    [
        ("Scores: 3, 3, 3, 3", "not JSON"),
        ("[3, 3, 3, 3]", "JSON object"),
        ('{"subject_correspondence": 3, "appearance_description": 3, "temporal_description": 3}', "missing"),
        (
            '{"subject_correspondence": 3, "appearance_description": 3, "temporal_description": 3, '
            '"hallucination_detection": 3, "overall": 3}',
            "unexpected",
        ),
        (
            '{"subject_correspondence": 6, "appearance_description": 3, "temporal_description": 3, '
            '"hallucination_detection": 3}',
            "0 to 5",
        ),
        (
            '{"subject_correspondence": 2.5, "appearance_description": 3, "temporal_description": 3, '
            '"hallucination_detection": 3}',
            "integer",
        ),
        (
            '{"subject_correspondence": "3", "appearance_description": 3, "temporal_description": 3, '
            '"hallucination_detection": 3}',
            "integer",
        ),
        (
            '{"subject_correspondence": true, "appearance_description": 3, "temporal_description": 3, '
            '"hallucination_detection": 3}',
            "integer",
        ),
        (
            'Sure! {"subject_correspondence": 3, "appearance_description": 3, "temporal_description": 3, '
            '"hallucination_detection": 3}',
            "not JSON",
        ),
    ],
)
def test_parse_rejects_everything_else(reply, complaint):
    with pytest.raises(JudgeReplyError, match=complaint):
        parse_judgement(reply)


def test_prompt_holds_both_texts():
    messages = judge_messages("a red ball rolls", "The red circle moves right.")
    assert "a red ball rolls" in messages[-1]["content"]
    assert "The red circle moves right." in messages[-1]["content"]


def test_retries_malformed_out_of_range_and_server_errors(tmp_path):
    with judge_server() as server:
        server.faults.extend(["malformed", "out_of_range", "http500"])
        judgement = Judge(config(server.url, tmp_path)).score("a blue square", "The blue square.")
        assert judgement.scores == expected_scores("a blue square")
        assert judgement.attempts == 4
        assert len(judgement.failures) == 3
        assert "malformed" in judgement.failures[0] and "HTTP 500" in judgement.failures[2]
        assert server.authorizations[-1] == f"Bearer {SECRET}"


def test_timeout_is_retried(tmp_path):
    with judge_server() as server:
        server.slow_s = 3.0
        server.faults.append("slow")
        judgement = Judge(config(server.url, tmp_path)).score("a green circle", "The green circle.")
        assert judgement.scores == expected_scores("a green circle")
        assert judgement.failures == ["timeout after 2.0s"]


def test_gives_up_after_max_attempts_and_caches_nothing(tmp_path):
    with judge_server() as server:
        server.faults.extend(["malformed"] * 4)
        judge = Judge(config(server.url, tmp_path))
        judgement = judge.score("x", "y")
        assert judgement.scores is None and judgement.attempts == 4
        assert "malformed" in judgement.error
        assert len(judge.cache) == 0
        assert judge.score("x", "y").scores == expected_scores("x")


def test_bad_credentials_fail_fast(tmp_path):
    with judge_server() as server:
        server.faults.append("http401")
        with pytest.raises(JudgeFatalError, match=KEY_ENV):
            Judge(config(server.url, tmp_path)).score("x", "y")
        assert len(server.requests) == 1


def test_missing_key_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(KeyError, match=KEY_ENV):
        Judge(config("http://127.0.0.1:9/v1", tmp_path))


def test_concurrent_scoring_and_cache_across_runs(tmp_path):
    items = [(str(i), f"prediction {i}", f"caption {i}") for i in range(7)]
    with judge_server() as server:
        first: dict[str, object] = {}
        Judge(config(server.url, tmp_path)).score_many(items, lambda i, j: first.setdefault(i, j))
        assert {i: j.scores for i, j in first.items()} == {i: expected_scores(p) for i, p, _ in items}
        assert len(server.requests) == 7
        again: dict[str, object] = {}
        Judge(config(server.url, tmp_path)).score_many(items, lambda i, j: again.setdefault(i, j))
        assert len(server.requests) == 7
        assert all(j.cached and j.attempts == 0 for j in again.values())
        other_model = Judge(config(server.url, tmp_path, model="another-judge"))
        other_model.score("prediction 0", "caption 0")
        assert len(server.requests) == 8
    assert SECRET not in (tmp_path / "cache" / "judge_cache.jsonl").read_text()
