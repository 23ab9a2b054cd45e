"""Sharded search: the corpus split across Ray actors, queries fanned out, top-k merged in the caller.

Each actor loads one shard file of a persisted index folder (``hardneg.search.stored``); a killed
actor is restarted by Ray and reloads its shard (``max_restarts``/``max_task_retries``).
Global rows are the shard's offset plus its local rows, so with the exact backend the merged
result equals the unsharded search, scores and rows (ties by lower row).

Example::

    with open_index("runs/a/rounds/00000/index", IndexConfig()) as index:   # a folder of 4 shards
        scores, rows = index.search(queries, k=10)
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from hardneg.config import IndexConfig
from hardneg.search.base import Index
from hardneg.search.exact import merge_topk


def split_files(files: list[tuple[str, int]], num_shards: int) -> list[tuple[list[tuple[str, int]], int]]:
    """Contiguous file ranges of about equal rows: ``[(files, row offset), ...]`` (whole files per shard)."""
    total = sum(rows for _, rows in files)
    shards: list[tuple[list[tuple[str, int]], int]] = []
    current: list[tuple[str, int]] = []
    start = seen = 0
    for url, rows in files:
        current.append((url, rows))
        seen += rows
        if seen >= total * (len(shards) + 1) / num_shards and len(shards) < num_shards - 1:
            shards.append((current, start))
            current, start = [], seen
    if current:
        shards.append((current, start))
    return shards


def merge_shards(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of every shard's ``(scores, global rows)`` per query, ties by lower row."""
    return merge_topk(np.concatenate([s for s, _ in parts], axis=1), np.concatenate([r for _, r in parts], axis=1), k)


class ShardActor:
    """Holds one shard of a persisted index (loaded from its file); ``search`` returns global rows."""

    def __init__(self, index_dir: str, shard: dict, cfg: IndexConfig, storage_options: dict):
        from hardneg import storage
        from hardneg.search.stored import read_shard

        storage.restore_options(storage_options)
        self.index = read_shard(index_dir, shard, cfg)
        self.offset = shard["offset"]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(queries, k)
        return scores, np.where(rows >= 0, rows + self.offset, -1)

    def ntotal(self) -> int:
        return self.index.ntotal


class ShardedIndex(Index):
    """One Ray actor per shard of a committed index folder (``shards``: its manifest's entries).

    Each actor takes one CPU (one GPU with a GPU index on a GPU cluster), or a share of them when
    there are more shards than CPUs (``hardneg.resources.shard_resources``). In a round run in process
    (``hardneg.ray_runtime.in_process``) the shards are ``ShardActor`` objects in this process instead.
    """

    def __init__(self, index_dir: str, shards: list[dict], cfg: IndexConfig, resources_per_shard: Optional[dict] = None):
        from hardneg import storage
        from hardneg.ray_runtime import in_process

        self.backend = cfg.backend  # the shards' backend
        self.local = [ShardActor(index_dir, shard, cfg, storage.s3_options()) for shard in shards] if in_process() else None
        if self.local is not None:
            self.actors, self.ntotal = [], sum(shard.ntotal() for shard in self.local)
            return
        import ray

        from hardneg.resources import cluster_resources, shard_resources

        if resources_per_shard is None:
            cpus, gpus = shard_resources(len(shards), cluster_resources(), cfg.device)
            resources_per_shard = {"num_cpus": cpus, "num_gpus": gpus}
        options = {"max_restarts": -1, "max_task_retries": -1, **resources_per_shard}
        actor = ray.remote(ShardActor).options(**options)
        self.actors = [actor.remote(index_dir, shard, cfg, storage.s3_options()) for shard in shards]
        self.ntotal = sum(ray.get([a.ntotal.remote() for a in self.actors]))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.local is not None:
            return merge_shards([shard.search(queries, k) for shard in self.local], k)
        import ray

        ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32))
        return merge_shards(ray.get([a.search.remote(ref, k) for a in self.actors]), k)

    def close(self) -> None:
        """Kill the shard actors and return once each is dead (``ray.kill`` only sends the kill: a call made
        right after it could still reach the actor)."""
        import ray

        for a in self.actors:
            ray.kill(a)
        for a in self.actors:
            while True:  # each try is a round trip to the actor; it fails once the kill has landed
                try:
                    ray.get(a.__ray_ready__.remote())
                except ray.exceptions.RayActorError:
                    break
        self.actors = []
