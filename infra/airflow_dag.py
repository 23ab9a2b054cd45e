"""An Airflow DAG that re-mines and trains a hardneg run, one tick per schedule interval.

The tasks are the commands of ``infra/orchestration.py`` as BashOperators, chained; every command
is idempotent, so a retried or overlapping tick does no harm (``max_active_runs=1`` keeps ticks in
order). Set ``HARDNEG_CONFIG`` and ``HARDNEG_RUN_DIR`` (and ``HARDNEG_SCHEDULE``) in the scheduler's
environment. The DAG exists only where Airflow is installed; importing this file elsewhere defines
nothing.

Example (copy into the DAGs folder, next to orchestration.py)::

    HARDNEG_CONFIG=s3://bucket/job.yaml HARDNEG_RUN_DIR=s3://bucket/runs/a airflow dags test hardneg_remine
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from orchestration import tick_shell_lines  # noqa: E402

try:
    from airflow import DAG
    from airflow.operators.bash import BashOperator
except ImportError:  # Airflow is not a dependency of hardneg
    DAG = None

CONFIG = os.environ.get("HARDNEG_CONFIG", "job.yaml")
RUN_DIR = os.environ.get("HARDNEG_RUN_DIR", "runs/job")
SCHEDULE = os.environ.get("HARDNEG_SCHEDULE", "@hourly")

if DAG is not None:
    import datetime

    with DAG(
        dag_id="hardneg_remine",
        schedule=SCHEDULE,
        start_date=datetime.datetime(2025, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 2, "retry_delay": datetime.timedelta(minutes=5)},
        tags=["hardneg"],
    ) as dag:
        names = ["prepare_round0", "remine", "train_block"]
        tasks = [BashOperator(task_id=name, bash_command=line) for name, line in zip(names, tick_shell_lines(CONFIG, RUN_DIR))]
        for upstream, downstream in zip(tasks, tasks[1:]):
            upstream >> downstream
