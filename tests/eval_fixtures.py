"""Test helpers for evaluation: a small demo, the eval config, and a local OpenAI-compatible judge.

The server answers ``POST /v1/chat/completions`` with a chat-completion JSON whose content is a
judge reply. Its scores are derived from the prediction text, so they are deterministic. Faults
are queued and each consumed by the next request, whatever it is: ``malformed`` (prose, not JSON),
``out_of_range`` (a score of 7), ``slow`` (sleeps past the client's timeout), ``http500`` and
``http401``. The real ``openai`` client speaks HTTP to it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from swim.data.demo import generate_demo
from swim.eval.judge import DIMENSIONS

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
_PREDICTION = re.compile(r"Model description:\n<<<\n(.*?)\n>>>", re.DOTALL)


def expected_scores(prediction: str) -> dict[str, int]:
    """The scores the fake judge gives a prediction (a hash of its text, 0..5 per dimension)."""
    digest = hashlib.sha256(prediction.strip().encode("utf-8")).digest()
    return {key: digest[i] % 6 for i, key in enumerate(DIMENSIONS)}


@dataclass
class JudgeServer:
    """State shared with the handler: queued faults, received requests, the fake's address."""

    faults: deque[str] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    slow_s: float = 1.5
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None


def _handler(state: JudgeServer) -> type[BaseHTTPRequestHandler]:
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
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            with state.lock:
                state.requests.append(body)
                state.authorizations.append(self.headers.get("Authorization", ""))
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            fault = state.next_fault()
            if fault == "http500":
                self._send(500, {"error": {"message": "internal error"}})
                return
            if fault == "http401":
                self._send(401, {"error": {"message": "bad key"}})
                return
            if fault == "slow":
                time.sleep(state.slow_s)
            prediction = _PREDICTION.search(body["messages"][-1]["content"]).group(1)
            scores: dict[str, Any] = expected_scores(prediction)
            if fault == "out_of_range":
                scores[DIMENSIONS[0]] = 7
            content = "I think it is good." if fault == "malformed" else json.dumps(scores)
            self._send(
                200,
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                },
            )

    return Handler


@contextmanager
def judge_server() -> Iterator[JudgeServer]:
    """Run the fake judge on a free port of 127.0.0.1; ``state.url`` is its ``/v1`` base URL."""
    state = JudgeServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def make_demo(root: Path) -> Path:
    """A small demo dataset (2 bench videos: 10 Bench-Q questions and 2 Bench-D records per form)."""
    generate_demo(root, seed=0, num_train=1, num_val=2, num_bench=2, num_images=1, progress=False)
    return root


def compose_eval(demo: Path, cache: Path, *overrides: str) -> DictConfig:
    """``conf/eval.yaml`` composed as ``evaluate.py`` would, on the small demo, with ``overrides``."""
    defaults = [f"demo.dir={demo}", "demo.ensure=false", f"paths.cache_dir={cache}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="eval", overrides=[*defaults, *overrides])
