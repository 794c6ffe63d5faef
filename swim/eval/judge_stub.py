"""An offline OpenAI-compatible judge: a local HTTP server on 127.0.0.1 with deterministic scores.

``task.judge=stub`` (or ``task.judge.base_url=stub``) starts one for the run, and the real
``openai`` client speaks HTTP to it, so a dry run or a test exercises the whole client path:
requests, retries with backoff, the reply cache and resuming. It answers
``POST /v1/chat/completions`` with a chat completion whose content is a strict judge reply; the
scores are a hash of the model's description (:func:`stub_scores`), so they never depend on timing.

Faults are queued in :attr:`StubServer.faults`, each consumed by the next request, whatever it
is: ``malformed`` (prose, not JSON), ``out_of_range`` (a score of 7), ``slow`` (sleeps
``slow_s`` seconds, past a short client timeout), ``http500`` and ``http401``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from swim.eval.judge import DIMENSIONS

FAULTS = ("malformed", "out_of_range", "slow", "http500", "http401")
STUB_MODEL = "swim-stub-judge"
_PREDICTION = re.compile(r"Model description:\n<<<\n(.*?)\n>>>", re.DOTALL)


def stub_scores(prediction: str) -> dict[str, int]:
    """The scores the stub gives a description: bytes of its SHA-256, each mod 6 (0..5)."""
    digest = hashlib.sha256(prediction.strip().encode("utf-8")).digest()
    return {key: digest[i] % 6 for i, key in enumerate(DIMENSIONS)}


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _handler(state: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                return

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            with state.lock:
                state.requests.append(body)
                state.authorizations.append(self.headers.get("Authorization", ""))
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            fault = state.next_fault()
            if fault in ("http500", "http401"):
                self._send(int(fault[4:]), {"error": {"message": f"stub fault {fault}"}})
                return
            if fault == "slow":
                time.sleep(state.slow_s)
            found = _PREDICTION.search(str(body["messages"][-1]["content"]))
            scores: dict[str, Any] = stub_scores(found.group(1) if found else "")
            if fault == "out_of_range":
                scores[DIMENSIONS[0]] = 7
            content = "I think it is good." if fault == "malformed" else json.dumps(scores)
            self._send(200, _completion(str(body.get("model", STUB_MODEL)), content))

    return Handler


class StubServer:
    """The stub judge on a free port of 127.0.0.1; ``close`` stops it.

    Attributes:
        url: its ``/v1`` base URL.
        faults: queued faults (see the module doc), consumed one per request.
        requests, authorizations: every request body received and its ``Authorization`` header.
        slow_s: how long a ``slow`` fault sleeps.
    """

    def __init__(self, faults: Iterable[str] = ()):
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown:
            raise ValueError(f"stub judge faults {unknown}: expected some of {FAULTS}")
        self.faults: deque[str] = deque(faults)
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.slow_s = 1.5
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> StubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
