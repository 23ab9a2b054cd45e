"""Starting or joining Ray: a local instance on a laptop, the cluster under ``ray job submit``."""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

from hardneg import faults

logger = logging.getLogger(__name__)


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
