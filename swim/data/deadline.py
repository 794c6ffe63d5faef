"""Calls with a hard deadline: run in a forked child process that is killed when time runs out.

A decoder can spin forever inside native code while holding the GIL (dmlc/decord #269, #373,
#375); no thread-based or signal-based timeout in the same process can interrupt that. So
:func:`call_with_deadline` sends the call to a helper process and waits at most ``timeout_s`` for
the answer; past it the helper gets SIGKILL and the caller gets :class:`DeadlineExceeded`. The
next call forks a fresh helper. One helper per process (each dataloader worker has its own) serves
every call, so a call costs a round trip through a pipe, not a process start.

The helper is a plain ``os.fork`` (dataloader workers are daemonic and may not start
``multiprocessing`` children); it inherits the parent's modules and registered decoders, and dies
with its parent (``PR_SET_PDEATHSIG`` on Linux, and end-of-file on its pipe).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

from swim.data.schema import Rejection, SampleError

_PR_SET_PDEATHSIG = 1


class DeadlineExceeded(TimeoutError):
    """The call did not finish within its deadline; its helper process was killed."""


class HelperDied(RuntimeError):
    """The helper process died during the call (a crash in native code, say)."""


class _Helper:
    """A forked process running calls sent through a pipe, one at a time."""

    def __init__(self) -> None:
        parent, child = Pipe()
        # Objects that exist at the fork stay uncollected in the helper: a finaliser there (a
        # decord reader's, say) joins threads that only the parent has, and hangs or crashes it.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            parent.close()
            _serve(child)
        gc.unfreeze()
        child.close()
        self.pid, self.conn, self.owner = pid, parent, os.getpid()

    def kill(self) -> int:
        """SIGKILL the helper and reap it; returns its wait status."""
        self.conn.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        return os.waitpid(self.pid, 0)[1]


def _serve(conn: Connection) -> None:
    """The helper's loop: answer calls until the pipe closes; never returns."""
    code = 0
    try:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        while True:
            try:
                fn, args = conn.recv()
            except EOFError:
                break
            try:
                answer: tuple[str, Any] = ("ok", fn(*args))
            except SampleError as error:
                answer = ("sample_error", error.rejection)
            except Exception as error:
                answer = ("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
            conn.send(answer)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


_HELPER: _Helper | None = None


def call_with_deadline(fn: Callable[..., Any], args: tuple[Any, ...], timeout_s: float) -> Any:
    """``fn(*args)`` in this process's helper, or :class:`DeadlineExceeded` after ``timeout_s``.

    ``fn`` must be a module-level function and ``args`` and its result picklable. A
    :class:`SampleError` raised by ``fn`` is raised again here; any other exception becomes a
    ``RuntimeError`` carrying the helper's traceback.

    Raises:
        DeadlineExceeded: no answer within ``timeout_s`` (the helper was killed).
        HelperDied: the helper died without answering.
    """
    global _HELPER
    if _HELPER is None or _HELPER.owner != os.getpid():
        # A helper inherited through a fork belongs to the parent: never use or kill it here.
        _HELPER = _Helper()
    helper = _HELPER
    try:
        helper.conn.send((fn, args))
        ready = helper.conn.poll(timeout_s)
        answer = helper.conn.recv() if ready else None
    except (EOFError, OSError, BrokenPipeError):
        _HELPER = None
        status = helper.kill()
        raise HelperDied(f"the decode process died ({_describe(status)})") from None
    if answer is None:
        _HELPER = None
        helper.kill()
        raise DeadlineExceeded(f"no answer within {timeout_s:g} s; the decode process was killed")
    kind, value = answer
    if kind == "ok":
        return value
    if kind == "sample_error":
        raise SampleError(value)
    raise RuntimeError(f"in the decode process: {value}")


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def rejection_for(error: DeadlineExceeded | HelperDied, file: str, index: int, path: str) -> Rejection:
    """The rejection of a decode that timed out (``decode_timeout``) or crashed (``decode_crashed``)."""
    reason = "decode_timeout" if isinstance(error, DeadlineExceeded) else "decode_crashed"
    return Rejection(file, index, "video", reason, f"{path}: {error}")
