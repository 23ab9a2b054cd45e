"""Starting or joining Ray: a local instance on a laptop, the cluster under ``ray job submit``; or no Ray at all.

A laptop-sized round runs in process (``round_executor``, ``ray.in_process``): the stages call the
very functions their Ray tasks and actors run (read, tokenize, encode and write a block; build a
shard; mine a query file), one after the other in this process. Ray's start and shutdown, its worker
processes and their model loads are a fixed cost sentence-transformers never pays: on 724 pairs the
round took 60.2 s on Ray and 40.0 s in process (``bench/mine.py --n 724``, bench/README.md). Every stage asks ``in_process()`` which way to go.

Example::

    with round_executor(cfg, [cfg.queries.path, cfg.corpus.path]) as local:
        run_round(cfg)   # in process when ``local``, else on the Ray instance it started or joined
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Callable, Iterator, Optional, Sequence

from hardneg import faults

logger = logging.getLogger(__name__)

_in_process = False


def in_process() -> bool:
    """Whether the stages run in this process (inside a ``round_executor`` that chose it), not on Ray."""
    return _in_process


@contextlib.contextmanager
def round_executor(cfg, input_paths: Sequence[Optional[str]]) -> Iterator[bool]:
    """Run the stages inside this block in process (yields True), or start / join Ray (yields False).

    ``cfg.ray.in_process``: ``always``, ``never``, or ``auto``: in process when no cluster is named
    (``ray.address``, ``RAY_ADDRESS``), Ray is not running in this process already (a test session, a
    notebook that started it), and the files under ``input_paths`` hold at most ``ray.in_process_max_bytes``.
    """
    global _in_process
    local = _choose_in_process(cfg, input_paths)
    if local:
        logger.info("running in process, without Ray (ray.in_process=%s: inputs of at most %d bytes)",
                    cfg.ray.in_process, cfg.ray.in_process_max_bytes)
    else:
        start_ray(cfg)
    _in_process = local
    try:
        yield local
    finally:
        _in_process = False


def start_ray(cfg) -> None:
    """``init_ray`` with ``cfg.ray``'s settings, then log the resources the run will use."""
    from hardneg.resources import describe, plan_resources

    init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.object_store_memory)
    logger.info("resources:\n  %s", describe(plan_resources(cfg)).replace("\n", "\n  "))


def _choose_in_process(cfg, input_paths: Sequence[Optional[str]]) -> bool:
    mode = cfg.ray.in_process
    if mode != "auto":
        return mode == "always"
    ray = sys.modules.get("ray")  # not imported: not running either
    if cfg.ray.address or os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()):
        return False
    return not larger_than(input_paths, cfg.ray.in_process_max_bytes)


def larger_than(input_paths: Sequence[Optional[str]], limit: int) -> bool:
    """Whether the table files under ``input_paths`` (None: none) hold more than ``limit`` bytes in all
    (listed until the sum passes it)."""
    from hardneg import storage

    total = 0
    for _, info in storage.table_file_infos(input_paths):
        total += int(info.get("size") or 0)
        if total > limit:
            return True
    return False


def init_ray(
    address: Optional[str] = None,
    num_cpus: Optional[int] = None,
    object_store_memory: Optional[int] = None,
    extra_pythonpath: Sequence[str] = (),
) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``, or the job's cluster); else start a local Ray.

    Does nothing when Ray is already initialised in this process.
    """
    import ray

    if ray.is_initialized():
        return
    from hardneg import console

    env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **console.worker_env()}
    if faults.enabled():
        env[faults.GATE_ENV] = "1"
    if extra_pythonpath:
        paths = list(extra_pythonpath) + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
        _quiet_ray_data()
        return
    logger.info("starting a local Ray instance")
    # A new local instance turns token authentication on (Ray's secure default, kept) and warns that it
    # did, as if something were wrong; RAY_AUTH_MODE=token would say it too, but the driver reads its
    # mode before we could set it. Mute only that notice; other authentication errors still show.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # Ray starts its workers at nice 15 so the raylet stays responsive on a shared node. A local run is
    # the job the user asked for: at nice 15 any other busy process (a build, a second test run) takes
    # nearly all the CPU from the Encoder actor and a 30 s embed took over 10 minutes. A value the user
    # set is kept.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        # "local": a new instance, never a cluster some earlier `ray start` (or a crashed test) left behind.
        address="local",
        num_cpus=num_cpus,
        object_store_memory=object_store_memory,
        include_dashboard=False,
        runtime_env={"env_vars": env},
        log_to_driver=True,
    )
    _quiet_ray_data()


def _quiet_ray_data() -> None:
    from hardneg import console

    console.configure_ray_data()


def runs_here() -> bool:
    """Whether a stage's jobs run in this process: under ``in_process``, or when Ray is not started here."""
    ray = sys.modules.get("ray")  # not imported: not running either
    return in_process() or ray is None or not ray.is_initialized()


def run_jobs(fn: Callable, jobs: Sequence[tuple], **options) -> list:
    """``[fn(*job) for job in jobs]``: one after the other in this process (``in_process``, or Ray not started
    here), or one Ray task each (``options``: Ray's task options; ``max_retries`` 3 unless given), their results
    in ``jobs``' order. hardneg's own errors come back as they were raised (``get``)."""
    if runs_here():
        return [fn(*job) for job in jobs]
    import ray

    task = ray.remote(fn).options(**{"max_retries": 3, **options})
    return get([task.remote(*job) for job in jobs])


def get(refs):
    """``ray.get`` that re-raises hardneg's own errors from tasks as they were raised (no Ray traceback)."""
    import ray

    from hardneg.errors import HardnegError

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if hasattr(err, "cause") else None
        if isinstance(cause, HardnegError):
            raise type(cause)(*cause.args) from None
        raise
