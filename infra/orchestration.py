"""What an orchestrator (Airflow, Prefect, cron) runs for a hardneg run: one idempotent tick.

Each tick is three ``hardneg`` commands, run in order, each safe to repeat:

1. ``hardneg train CONFIG --max-blocks 0``: make round 0 with the base model if the run has none;
2. ``hardneg remine RUN_DIR --json``: turn the newest checkpoint into the next round ("nothing to do"
   when it already mined one; a crashed round resumes);
3. ``hardneg train RUN_DIR --max-blocks 1``: train one block of ``train.remine_every`` epochs on it
   ("nothing to do" once ``train.epochs`` are trained).

Exit codes: 0 done or nothing to do (the tick goes on), 1 failure (retry the tick), 2 bad input or
config (a person must look). ``infra/airflow_dag.py`` and ``infra/prefect_flow.py`` run exactly
these commands.

Example::

    for command in tick_commands("job.yaml", "s3://bucket/runs/a"):
        subprocess.run(command, check=True)
"""

from __future__ import annotations

import shlex


def tick_commands(config: str, run_dir: str, hardneg: str = "hardneg") -> list[list[str]]:
    """The argv of each command of one tick, in order (``config`` must name ``run_dir`` as its run_dir)."""
    return [
        [hardneg, "train", config, "--max-blocks", "0"],
        [hardneg, "remine", run_dir, "--json"],
        [hardneg, "train", run_dir, "--max-blocks", "1"],
    ]


def tick_shell_lines(config: str, run_dir: str, hardneg: str = "hardneg") -> list[str]:
    """The same commands as shell lines (what a BashOperator or a cron entry takes)."""
    return [shlex.join(command) for command in tick_commands(config, run_dir, hardneg)]
