"""A progress bar with elapsed time and ETA for evaluation loops (rich, on stderr).

Replaces one log line per batch: a 196-question benchmark printed about 150 ``N/196`` lines.
The bar is drawn only on a terminal; the run's log gets one line when the loop ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger(__name__)


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar of ``total`` items; yields ``advance(n)``, which moves it ``n`` items on.

    When the loop ends, ``"<description>: <done>/<total> in <s> s"`` goes to the log.
    """
    started = time.perf_counter()
    done = 0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            nonlocal done
            done += n
            bar.update(task, advance=n)

        yield advance
    log.info("%s: %d/%d in %.1f s", description, done, total, time.perf_counter() - started)
