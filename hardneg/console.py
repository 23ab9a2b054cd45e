"""What ``hardneg`` prints while it works: the terminal way in a terminal, the log way in a log.

In a terminal (stdout and stderr both TTYs): Ray Data's own progress bars for Ray stages and tqdm
for loops that run in the driver. Otherwise (``make demo > demo.log``, CI, cron, an orchestrator):
no bars and no Ray Data status blocks; each long stage logs one line when it starts, one when it
ends, and "still running" lines between, never closer than ``HEARTBEAT_SECONDS`` (30 s, then gaps
of 60 s, 120 s, ... up to 5 min). ``--quiet`` keeps warnings, errors and the final summary; ``-v``
adds debug lines.

Example::

    console.setup(verbose=False, quiet=False)
    with console.stage("embed corpus", rows=2428):
        ds.write_parquet(...)
    for batch in console.progress(batches, "mine", total=len(batches)):
        ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Iterable, Iterator, Optional, TypeVar

logger = logging.getLogger("hardneg")

HEARTBEAT_SECONDS = 30.0  # the first "still running" line; the gap then doubles, up to MAX_HEARTBEAT_SECONDS
MAX_HEARTBEAT_SECONDS = 300.0  # a log stays alive for watchdogs that kill a job silent for 10 minutes
NOISY_LOGGERS = ("botocore", "s3fs", "aiobotocore", "urllib3", "filelock", "fsspec", "matplotlib", "PIL")
# Environment the Ray workers get when the output is a log: libraries' own bars would print a line each.
QUIET_WORKER_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}

T = TypeVar("T")

_state = {"quiet": False}


def interactive() -> bool:
    """Whether a person watches: stdout and stderr are terminals (Ray Data uses stdout's TTY-ness too)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def show_progress() -> bool:
    """Progress bars only in a terminal, never with ``--quiet``; ``HARDNEG_PROGRESS=0`` turns them off."""
    return interactive() and not _state["quiet"] and os.environ.get("HARDNEG_PROGRESS", "1") == "1"


def setup(verbose: bool = False, quiet: bool = False) -> None:
    """Configure logging for a ``hardneg`` command: INFO (``-v``: DEBUG, ``--quiet``: WARNING) on stderr."""
    _state["quiet"] = quiet
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for key, value in worker_env().items():  # the driver loads models too
        os.environ.setdefault(key, value)


def worker_env() -> dict:
    """Environment variables for Ray workers (``runtime_env``) matching this console."""
    return {} if show_progress() else dict(QUIET_WORKER_ENV)


def configure_ray_data() -> None:
    """Ray Data's progress: its bars in a terminal; in a log, nothing (``stage`` heartbeats stand in).

    Ray Data logs a 12-line status block per dataset every 10 s when stdout is not a TTY
    (``LoggingExecutionProgressManager``); with ``enable_progress_bars = False`` it logs nothing.
    """
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = show_progress()
    ctx.print_on_execution_start = False
    if not ctx.enable_progress_bars:
        log_once("ray_data_progress_manager_disabled")  # claim Ray's once-only "progress bars disabled" warning
    logging.getLogger("ray.data").setLevel(logging.WARNING if not verbose_logging() else logging.DEBUG)


def verbose_logging() -> bool:
    return logging.getLogger().getEffectiveLevel() <= logging.DEBUG


@contextlib.contextmanager
def stage(name: str, rows: Optional[int] = None) -> Iterator[None]:
    """Log ``name`` starting and ending; in a log, ``still running`` lines between (after 30 s, 90 s, 210 s, ...).

    In a terminal Ray Data's bars show the progress, so only the start and end lines are logged.
    """
    started = time.perf_counter()
    what = f"{name} ({rows:,} rows)" if rows is not None else name
    logger.info("%s: started", what)
    done = threading.Event()
    beat = None
    if not show_progress():
        beat = threading.Thread(target=_heartbeat, args=(name, started, done), name=f"hardneg-heartbeat-{name}", daemon=True)
        beat.start()
    try:
        yield
    finally:
        done.set()
        if beat is not None:
            beat.join()
    logger.info("%s: done in %.1f s", name, time.perf_counter() - started)


def _heartbeat(name: str, started: float, done: threading.Event) -> None:
    gap = HEARTBEAT_SECONDS
    while not done.wait(gap):
        logger.info("%s: still running (%.0f s)", name, time.perf_counter() - started)
        gap = min(2 * gap, MAX_HEARTBEAT_SECONDS)


def progress(iterable: Iterable[T], desc: str, total: Optional[int] = None) -> Iterable[T]:
    """tqdm over ``iterable`` in a terminal; the iterable itself otherwise."""
    if not show_progress():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
