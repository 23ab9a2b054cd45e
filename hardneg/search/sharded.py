"""Sharded search: the corpus split across Ray actors, queries fanned out, top-k merged in the driver.

Each actor reads a contiguous range of embedding files from storage and builds its own index;
a killed actor is restarted by Ray and reloads its shard (``max_restarts``/``max_task_retries``).
Global rows are the shard's offset plus its local rows, so with the exact backend the merged
result equals the unsharded search, scores and rows (ties by lower row).

Example::

    with ShardedIndex("runs/a/rounds/00000/embeddings", IndexConfig(num_shards=4)) as index:
        scores, rows = index.search(queries, k=10)
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from hardneg.config import IndexConfig
from hardneg.search.base import Index
from hardneg.search.exact import merge_topk
from hardneg.search.files import embedding_files


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


class ShardActor:
    """Holds one shard's index; ``search`` returns global rows."""

    def __init__(self, files: list[tuple[str, int]], offset: int, cfg: IndexConfig, storage_options: dict):
        from hardneg import storage
        from hardneg.search import build_index
        from hardneg.search.files import read_embeddings

        storage.restore_options(storage_options)
        _, vectors = read_embeddings("", files)
        self.index = build_index(vectors, cfg)
        self.offset = offset

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(queries, k)
        return scores, np.where(rows >= 0, rows + self.offset, -1)

    def ntotal(self) -> int:
        return self.index.ntotal


class ShardedIndex(Index):
    """``num_shards`` (default ``cfg.num_shards``) Ray actors over the files of a committed embeddings folder.

    Each actor takes one CPU (one GPU with a GPU index on a GPU cluster), or a share of them when
    there are more shards than CPUs (``hardneg.resources.shard_resources``).
    """

    backend = "sharded"

    def __init__(self, embeddings_dir: str, cfg: IndexConfig, num_shards: Optional[int] = None,
                 resources_per_shard: Optional[dict] = None):
        import ray

        from hardneg import storage
        from hardneg.resources import cluster_resources, shard_resources

        shards = split_files(embedding_files(embeddings_dir), num_shards or cfg.num_shards)
        if resources_per_shard is None:
            cpus, gpus = shard_resources(len(shards), cluster_resources(), cfg.device)
            resources_per_shard = {"num_cpus": cpus, "num_gpus": gpus}
        options = {"max_restarts": -1, "max_task_retries": -1, **resources_per_shard}
        actor = ray.remote(ShardActor).options(**options)
        self.actors = [actor.remote(files, offset, cfg, storage.s3_options()) for files, offset in shards]
        self.ntotal = sum(ray.get([a.ntotal.remote() for a in self.actors]))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import ray

        ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32))
        parts = ray.get([a.search.remote(ref, k) for a in self.actors])
        scores = np.concatenate([s for s, _ in parts], axis=1)
        rows = np.concatenate([r for _, r in parts], axis=1)
        return merge_topk(scores, rows, k)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
