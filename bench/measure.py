"""Run one benchmark arm in a child process; measure wall time and the peak RSS of its whole process tree.

The tree includes every process the arm starts (Ray's raylet, GCS and workers too), sampled
every 50 ms, so hardneg is charged for Ray's own memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psutil


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_arm(argv: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``argv``; the child prints one JSON line (its result) last on stdout. Adds wall_s and peak_rss_mb."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    root = psutil.Process(child.pid)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(root))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate(timeout=timeout)
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise RuntimeError(f"arm failed ({child.returncode}): {' '.join(argv)}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall_s=wall, peak_rss_mb=peak[0] / 2**20)
    return result


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(format(row.get(k, ""), f) if row.get(k) is not None else "" for k, _, f in columns) + " |" for row in rows]
    return "\n".join([head, rule] + body)
