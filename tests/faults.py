"""Test helpers: find Ray Data's Encoder actors and break them (or their node) while a pipeline runs.

``ray._private.state.actors()`` is read from the GCS directly, so it works without the dashboard
(the public state API, ``ray.util.state``, needs it, and the test Ray runs without one).
"""

import os
import signal
import threading
import time


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


def parquet_files(folder):
    """Parquet files anywhere under ``folder`` (the embed stage writes them into ``part-NNNNN/``)."""
    return [name for _, _, names in os.walk(folder) for name in names if name.endswith(".parquet")]


class KillAfterFirstShard(threading.Thread):
    """Once the first Parquet shard is in ``folder``, SIGKILL one live Encoder actor's process
    (or call ``kill(actor)`` instead; ``choose(alive)`` narrows the candidates). ``killed`` holds
    the actor that was hit."""

    def __init__(self, folder, kill=None, choose=None, timeout=120.0):
        super().__init__(daemon=True)
        self.folder, self.kill, self.choose, self.timeout = folder, kill, choose or (lambda alive: alive), timeout
        self.killed = None

    def run(self):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            alive = self.choose(encoder_actors("ALIVE"))
            if alive and parquet_files(self.folder):
                self.killed = alive[0]
                if self.kill:
                    self.kill(self.killed)
                else:
                    os.kill(self.killed["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)
