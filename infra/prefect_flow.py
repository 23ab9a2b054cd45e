"""A Prefect flow that re-mines and trains a hardneg run: the commands of ``infra/orchestration.py``,
one task each, in order; a non-zero exit fails the task (exit 1: retried; exit 2: bad input, not retried).

The flow exists only where Prefect is installed; importing this file elsewhere defines nothing.

Example::

    python infra/prefect_flow.py s3://bucket/job.yaml s3://bucket/runs/a      # one tick now
    # or deploy it with a schedule: hardneg_tick.serve(name="hardneg", cron="0 * * * *", parameters={...})
"""

from __future__ import annotations

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from orchestration import tick_commands  # noqa: E402

try:
    from prefect import flow, task
except ImportError:  # Prefect is not a dependency of hardneg
    flow = None

if flow is not None:

    @task(retries=2, retry_delay_seconds=300, retry_condition_fn=lambda task, run, state: _exit_code(state) == 1)
    def hardneg_command(command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
        return done.stdout

    @flow(name="hardneg-tick")
    def hardneg_tick(config: str, run_dir: str) -> None:
        for command in tick_commands(config, run_dir):
            hardneg_command(command)


def _exit_code(state) -> int:
    try:
        state.result()
    except subprocess.CalledProcessError as err:
        return err.returncode
    return 0


if __name__ == "__main__" and flow is not None:
    hardneg_tick(sys.argv[1], sys.argv[2])
