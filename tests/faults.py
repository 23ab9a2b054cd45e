"""Test helpers: find Ray actors, and break an Encoder actor (or its node) at a known point of the work.

The work is held at a ``hardneg.faults`` point (the Encoder actor has embedded a block and waits
before returning it) while the test kills it, then released: the kill lands mid-run on any
machine, however fast or busy. ``HARDNEG_FAULT_GATE=1`` must be in the environment before Ray
starts (tests/conftest.py sets it).

``ray._private.state.actors()`` is read from the GCS directly, so it works without the dashboard
(the public state API, ``ray.util.state``, needs it, and the test Ray runs without one).
"""

import contextlib
import os
import signal
import threading

from hardneg.faults import GATE_NAME, FaultGate

WAIT_SECONDS = 240  # a held point not reached by then fails the test (pytest-timeout stops it later anyway)


def actors_of(class_name, state=None):
    """Actors whose class name contains ``class_name``: ``[{"actor_id", "pid", "node_id", "state", "restarts"}]``."""
    import ray._private.state

    return [
        {"actor_id": a["ActorID"], "pid": a["Pid"], "node_id": a["Address"]["NodeID"], "state": a["State"], "restarts": a["NumRestarts"]}
        for a in ray._private.state.actors().values()
        if class_name in a["ActorClassName"] and (state is None or a["State"] == state)
    ]


def encoder_actors(state=None):
    """Ray Data's Encoder actor-pool workers (class ``MapWorker(MapBatches(EncoderActor))``)."""
    return actors_of("EncoderActor", state)


@contextlib.contextmanager
def fault_gate():
    """Put up the named ``FaultGate`` actor for the duration of a test; yields its handle."""
    import ray

    assert os.environ.get("HARDNEG_FAULT_GATE") == "1", "set HARDNEG_FAULT_GATE=1 before Ray starts"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node: a test that removes a worker node must not take the gate down with it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    gate = ray.remote(num_cpus=0)(FaultGate).options(name=GATE_NAME, scheduling_strategy=here).remote()
    ray.get(gate.wait_for.remote("never", count=0))  # the actor is up and named before any work looks for it
    try:
        yield gate
    finally:
        ray.kill(gate)


class KillAtPoint(threading.Thread):
    """Hold ``point`` in ``gate``; at the first arrival that ``choose(info)`` accepts, call ``kill(info)``
    (default: SIGKILL the arriving process), then release the point. ``killed`` holds that arrival's info;
    ``error`` what went wrong, if anything (the test asserts on both)."""

    def __init__(self, gate, point="embed.block", kill=None, choose=None):
        super().__init__(daemon=True)
        import ray

        self.gate, self.point = gate, point
        self.kill = kill or (lambda info: os.kill(info["pid"], signal.SIGKILL))
        self.choose = choose or (lambda info: True)
        self.killed = self.error = None
        ray.get(gate.hold.remote(point))  # held before the work starts, so no block gets past unseen

    def run(self):
        import ray

        try:
            for count in range(1, 1000):
                info = ray.get(self.gate.wait_for.remote(self.point, count), timeout=WAIT_SECONDS)[-1]
                if self.choose(info):
                    self.kill(info)
                    self.killed = info
                    return
        except Exception as err:  # reported by the test, not lost in a thread
            self.error = err
        finally:
            ray.get(self.gate.release.remote(self.point))
