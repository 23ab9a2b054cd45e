"""Fault injection: named points where a test holds the work while it breaks something.

Off by default. A point costs one environment lookup unless ``HARDNEG_FAULT_GATE=1`` is set in
the environment the Ray cluster was started with; then each point reports to the named Ray actor
``FaultGate`` (``GATE_NAME``) if one exists, and waits there while a test holds that point. Tests
use it to kill an Encoder actor, a node or a re-mine at a known step, whatever the machine's speed,
as Ray's own tests do with their ``SignalActor``.

Points (name: where, and what ``info`` carries besides ``pid``, ``node_id`` and ``actor_id``):

- ``embed.block``: an Encoder actor has embedded a block, before returning it (``rows``);
- ``loop.round``: the training loop is about to pick the round block ``block`` trains on (``block``);
- ``loop.train``: block ``block`` starts training on round ``round`` (``block``, ``round``);
- ``remine.start`` / ``remine.done``: an asynchronous re-mine task starts / has committed its round (``checkpoint``).

Example (a test)::

    gate = FaultGate.options(name=GATE_NAME).remote()
    ray.get(gate.hold.remote("embed.block"))
    ...  # start the work; then, on another thread:
    info = ray.get(gate.wait_for.remote("embed.block"))[0]
    os.kill(info["pid"], signal.SIGKILL)
    ray.get(gate.release.remote("embed.block"))
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

GATE_ENV = "HARDNEG_FAULT_GATE"
GATE_NAME = "hardneg-fault-gate"


def enabled() -> bool:
    """Whether fault points report to a gate (``HARDNEG_FAULT_GATE=1``)."""
    return os.environ.get(GATE_ENV) == "1"


def point(name: str, **info: Any) -> None:
    """Report reaching point ``name`` to the fault gate and wait while a test holds it; a no-op by default."""
    if not enabled():
        return
    import ray

    if not ray.is_initialized():  # a round run in process: no gate to report to
        return
    try:
        gate = ray.get_actor(GATE_NAME)
    except ValueError:  # no test has put a gate up
        return
    context = ray.get_runtime_context()
    where = {"pid": os.getpid(), "node_id": context.get_node_id(), "actor_id": context.get_actor_id()}
    ray.get(gate.arrive.remote(name, {**where, **info}))


class FaultGate:
    """The actor behind ``point``: records arrivals, holds the points a test asked for until it releases them.

    Make it a Ray actor with ``ray.remote(num_cpus=0)(FaultGate)`` (it must not take a CPU the work needs).
    A hold may match only some arrivals: ``hold("loop.round", block=2)`` holds block 2 and lets the others pass.
    """

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, dict]] = []
        self.holds: list[tuple[str, dict, asyncio.Event]] = []
        self.changed = asyncio.Event()

    def hold(self, name: str, **match: Any) -> None:
        """From now on, arrivals at ``name`` whose info contains ``match`` wait until ``release``."""
        self.holds.append((name, match, asyncio.Event()))

    def release(self, name: str) -> None:
        """Let every held arrival at ``name`` (and later ones) go on."""
        for held, _, event in self.holds:
            if held == name:
                event.set()

    async def arrive(self, name: str, info: dict) -> None:
        self.arrivals.append((name, info))
        self.changed.set()
        for held, match, event in self.holds:
            if held == name and all(info.get(key) == value for key, value in match.items()):
                await event.wait()

    async def wait_for(self, name: str, count: int = 1, **match: Any) -> list[dict]:
        """The infos of the first ``count`` arrivals at ``name`` matching ``match``, once there are that many."""
        while True:
            found = [info for arrived, info in self.arrivals if arrived == name and all(info.get(k) == v for k, v in match.items())]
            if len(found) >= count:
                return found[:count]
            self.changed.clear()
            await self.changed.wait()
