"""The Bench-D judge: an LLM behind any OpenAI-compatible endpoint scores generated descriptions.

Each description is scored against the reference caption on VideoRefer-Bench-D's four dimensions,
0 to 5 each, in a strict JSON reply. Transport errors, timeouts, rate limits, server errors and
malformed replies are retried with exponential backoff; replies are cached on disk, keyed by
(prediction, caption, judge model, prompt version), so that a rerun sends no request for anything
already judged. The API key is read from the environment variable the config names and is never
logged or stored. ``base_url: stub`` starts the offline judge of ``swim.eval.judge_stub`` for the
run and points the same client at it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from swim.eval.results import read_jsonl

log = logging.getLogger(__name__)

DIMENSIONS = (
    "subject_correspondence",
    "appearance_description",
    "temporal_description",
    "hallucination_detection",
)
DIMENSION_TITLES = {
    "subject_correspondence": "Subject Correspondence",
    "appearance_description": "Appearance Description",
    "temporal_description": "Temporal Description",
    "hallucination_detection": "Hallucination Detection",
}
PROMPT_VERSION = "swim-judge-v1"
STUB = "stub"

SYSTEM_PROMPT = "You grade descriptions of objects in videos. You answer with JSON only."
USER_PROMPT = """A model was asked to describe one object in a video. Compare its description with a human \
reference description of the same object. You cannot see the video: take the reference as the truth.

Give four integer scores from 0 (worst) to 5 (best):
- subject_correspondence: the description is about the same object as the reference (kind, identity).
- appearance_description: colour, shape, size, parts and other visual attributes agree with the reference \
and are covered as fully.
- temporal_description: the motion, actions and changes over time, and their order, agree with the reference.
- hallucination_detection: 5 when nothing stated is contradicted by or absent from the reference; one point \
less for each invented or wrong detail.

Reference description:
<<<
{caption}
>>>

Model description:
<<<
{prediction}
>>>

Answer with exactly one JSON object and nothing else:
{{"subject_correspondence": <0-5>, "appearance_description": <0-5>, "temporal_description": <0-5>, \
"hallucination_detection": <0-5>}}"""

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class JudgeReplyError(ValueError):
    """The judge's reply is not the strict JSON form the prompt asks for."""


class JudgeFatalError(RuntimeError):
    """The endpoint refuses every request (bad key, unknown model, wrong URL): no point retrying."""


@dataclass
class JudgeConfig:
    """How to reach and use the judge (``conf/task/bench_d.yaml``'s ``judge`` block).

    Attributes:
        base_url: the OpenAI-compatible endpoint, e.g. ``https://api.openai.com/v1`` or a local vLLM;
            ``stub``: the offline stub judge on 127.0.0.1, started for the run (no key needed).
        model: the judge model name sent with each request.
        api_key_env: NAME of the environment variable holding the API key (the key itself never
            appears in a config or a log).
        timeout_s: per-request timeout.
        max_attempts: tries per description (errors, timeouts, malformed replies) before giving up.
        backoff_s: first retry delay; doubles each attempt (with jitter), capped at ``backoff_max_s``.
        backoff_max_s: the longest delay between two attempts.
        concurrency: requests in flight at once.
        temperature: sampling temperature of the judge (0: as deterministic as the endpoint allows).
        max_tokens: reply length limit.
        cache_dir: folder of the reply cache; ``None`` disables caching.
        prompt_version: part of the cache key; bump it whenever the prompt text changes.
        stub_faults: faults the stub judge answers its first requests with (``swim.eval.judge_stub``),
            to rehearse retries in a dry run; only with ``base_url: stub``.
    """

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-2024-08-06"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_attempts: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    concurrency: int = 8
    temperature: float = 0.0
    max_tokens: int = 200
    cache_dir: str | None = None
    prompt_version: str = PROMPT_VERSION
    stub_faults: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.stub_faults and self.base_url != STUB:
            raise ValueError("judge.stub_faults is only for judge.base_url=stub")


@dataclass
class Judgement:
    """The outcome of judging one description.

    Attributes:
        scores: dimension -> score in 0..5, or ``None`` when every attempt failed.
        error: the last failure's description when ``scores`` is ``None``.
        attempts: requests sent (0 for a cache hit).
        cached: whether the scores came from the cache.
        reply: the judge's raw reply that was accepted.
        failures: what went wrong on each failed attempt, in order.
    """

    scores: dict[str, int] | None
    error: str | None = None
    attempts: int = 0
    cached: bool = False
    reply: str | None = None
    failures: list[str] = field(default_factory=list)


def judge_messages(prediction: str, caption: str) -> list[dict[str, str]]:
    """The chat messages asking the judge to score ``prediction`` against ``caption``."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": USER_PROMPT.format(caption=caption.strip(), prediction=prediction.strip()),
        },
    ]


def parse_judgement(reply: str) -> dict[str, int]:
    """Read the strict JSON reply: one object, exactly the four dimensions, integers 0..5.

    The only leniency is a surrounding Markdown code fence (many chat models add one).

    Raises:
        JudgeReplyError: anything else, saying what was wrong.
    """
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise JudgeReplyError(f"not JSON ({error.msg} at {error.pos}): {reply[:120]!r}") from None
    if not isinstance(value, dict):
        raise JudgeReplyError(f"expected a JSON object, got {type(value).__name__}")
    if set(value) != set(DIMENSIONS):
        missing = sorted(set(DIMENSIONS) - set(value))
        extra = sorted(set(value) - set(DIMENSIONS))
        raise JudgeReplyError(f"keys differ from the four dimensions: missing {missing}, unexpected {extra}")
    scores = {}
    for key in DIMENSIONS:
        score = value[key]
        if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 5:
            raise JudgeReplyError(f"{key}={score!r}: expected an integer from 0 to 5")
        scores[key] = score
    return scores


def cache_key(prediction: str, caption: str, model: str, prompt_version: str) -> str:
    """A stable hash of what determines a judgement."""
    payload = json.dumps([prediction, caption, model, prompt_version], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Accepted judge replies on disk (``judge_cache.jsonl`` in ``folder``), safe across threads."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / "judge_cache.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries = {row["key"]: row for row in read_jsonl(self.path)}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, scores: dict[str, int], reply: str, model: str, prompt_version: str) -> None:
        row = {"key": key, "scores": scores, "reply": reply, "model": model, "prompt_version": prompt_version}
        with self._lock:
            self._entries[key] = row
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


_RETRYABLE_STATUS = {408, 409, 429}
_FATAL_STATUS = {401, 403, 404}


class Judge:
    """Scores descriptions with retries, a disk cache and bounded concurrency; ``close`` when done.

    Attributes:
        url: the endpoint requests go to (the stub's local address for ``base_url: stub``).
        stub: the running stub judge, or ``None``.
    """

    def __init__(self, cfg: JudgeConfig, client: openai.OpenAI | None = None):
        from swim.eval.judge_stub import StubServer

        self.cfg = cfg
        self.cache = JudgeCache(cfg.cache_dir) if cfg.cache_dir else None
        self.stub = StubServer(cfg.stub_faults) if cfg.base_url == STUB else None
        self.url = self.stub.url if self.stub is not None else cfg.base_url
        api_key = "stub" if self.stub is not None else _api_key(cfg.api_key_env)
        self.client = client or openai.OpenAI(
            base_url=self.url, api_key=api_key, timeout=cfg.timeout_s, max_retries=0
        )

    def close(self) -> None:
        """Stop the stub judge, if one runs."""
        if self.stub is not None:
            self.stub.close()

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ask(self, prediction: str, caption: str) -> str:
        response = self.client.chat.completions.create(
            model=self.cfg.model,
            messages=judge_messages(prediction, caption),
            temperature=self.cfg.temperature,
            max_tokens=self.cfg.max_tokens,
        )
        if not response.choices or response.choices[0].message.content is None:
            raise JudgeReplyError("reply without message content")
        return response.choices[0].message.content

    def _delay(self, attempt: int) -> float:
        return min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)

    def score(self, prediction: str, caption: str) -> Judgement:
        """Judge one description: the cache first, then up to ``max_attempts`` requests.

        Raises:
            JudgeFatalError: the endpoint rejects the credentials, model or URL (401/403/404).
        """
        key = cache_key(prediction, caption, self.cfg.model, self.cfg.prompt_version)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return Judgement(scores=hit["scores"], cached=True, reply=hit["reply"])
        failures: list[str] = []
        for attempt in range(self.cfg.max_attempts):
            try:
                reply = self._ask(prediction, caption)
                scores = parse_judgement(reply)
            except openai.APIStatusError as error:
                if error.status_code in _FATAL_STATUS:
                    raise JudgeFatalError(
                        f"judge endpoint {self.url} answered {error.status_code} for model "
                        f"{self.cfg.model!r}: check judge.base_url, judge.model and ${self.cfg.api_key_env}"
                    ) from None
                failures.append(f"HTTP {error.status_code}")
                if error.status_code < 500 and error.status_code not in _RETRYABLE_STATUS:
                    break
            except openai.APITimeoutError:
                failures.append(f"timeout after {self.cfg.timeout_s}s")
            except openai.APIConnectionError as error:
                failures.append(f"connection error: {error.__class__.__name__}")
            except JudgeReplyError as error:
                failures.append(f"malformed reply: {error}")
            else:
                if self.cache is not None:
                    self.cache.put(key, scores, reply, self.cfg.model, self.cfg.prompt_version)
                return Judgement(scores=scores, attempts=attempt + 1, reply=reply, failures=failures)
            log.warning("judge attempt %d/%d failed: %s", attempt + 1, self.cfg.max_attempts, failures[-1])
            if attempt + 1 < self.cfg.max_attempts:
                time.sleep(self._delay(attempt))
        return Judgement(scores=None, error=failures[-1], attempts=len(failures), failures=failures)

    def score_many(
        self,
        items: Iterable[tuple[str, str, str]],
        on_result: Callable[[str, Judgement], None],
    ) -> None:
        """Judge ``(item_id, prediction, caption)`` triples, at most ``concurrency`` at a time.

        ``on_result(item_id, judgement)`` runs in the calling thread as each result arrives, so it
        may write files without locking. A fatal endpoint error cancels what has not started.
        """
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            futures = {pool.submit(self.score, pred, caption): item_id for item_id, pred, caption in items}
            try:
                for future in as_completed(futures):
                    on_result(futures[future], future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


def _api_key(variable: str) -> str:
    key = os.environ.get(variable)
    if not key:
        raise KeyError(
            f"environment variable {variable!r} (judge.api_key_env) is not set: export the judge's API key "
            "under that name (for a local endpoint without authentication any non-empty value works)"
        )
    return key
