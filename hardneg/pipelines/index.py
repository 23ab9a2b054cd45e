"""The index stage: build a round's index once from its embedding shards and persist it.

``rounds/NNNNN/index/`` holds one file per search shard (``hardneg.search.stored``) and a
MANIFEST.json written last. Each shard is built by a Ray task that reads only its own embedding
files, so the driver never holds the vectors. Mining, the recall check and the held-out
evaluation all open this folder (``hardneg.search.open_index``); a resumed round reuses it.

Example::

    manifest = index_or_reuse(cfg.index, "runs/a/rounds/00000/embeddings", storage.resolve("runs/a/rounds/00000/index"))
    manifest["shards"][0]["file"]   # "shard-00000.npy"
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from hardneg import storage
from hardneg.config import IndexConfig
from hardneg.ray_runtime import run_jobs, runs_here
from hardneg.resources import cluster_resources, shard_resources
from hardneg.search import embedding_files, index_manifest, shard_name, split_files, write_shard

logger = logging.getLogger(__name__)


def index_or_reuse(cfg: IndexConfig, embeddings_dir: str, out: storage.Location) -> dict:
    """The manifest of the committed index ``out``, building and committing it from ``embeddings_dir`` when absent."""
    if storage.is_committed(out):
        logger.info("index already built: %s", out.url)
        return index_manifest(out.url)
    return build_index_dir(cfg, embeddings_dir, out)


def build_index_dir(cfg: IndexConfig, embeddings_dir: str, out: storage.Location) -> dict:
    """Build ``cfg.num_shards`` shards over the committed embeddings (one Ray task each, or one after the other
    in this process: ``runs_here``), write them, commit ``out``."""
    started = time.perf_counter()
    shards = split_files(embedding_files(embeddings_dir), cfg.num_shards) or [([], 0)]
    return commit_index(cfg, out, write_shard, [((files, cfg), offset) for files, offset in shards], embeddings_dir, started)


def commit_index(cfg: IndexConfig, out: storage.Location, task: Callable, shards: list[tuple[tuple, int]], embeddings_dir: str,
                 started: float, **about) -> dict:
    """Run ``task(*args, shard_url, storage_options)`` for each shard (``shards``: ``(args, first global row)``), one
    Ray task each (or here: ``runs_here``); each writes its shard file and returns its rows. Commit ``out``
    with the manifest (``about``: more of it) and return it."""
    storage.prepare_output(out)
    names = [shard_name(shard, cfg.backend) for shard in range(len(shards))]
    jobs = [(*args, out.join(name).url, storage.s3_options()) for (args, _), name in zip(shards, names)]
    cpus, gpus = (1, 0) if runs_here() else shard_resources(len(shards), cluster_resources(), cfg.device)
    rows = run_jobs(task, jobs, num_cpus=cpus, num_gpus=gpus)
    manifest = {
        "kind": "index", "backend": cfg.backend, "embeddings": storage.resolve(embeddings_dir).url, "rows": sum(rows),
        "shards": [{"file": name, "offset": offset, "rows": count} for name, (_, offset), count in zip(names, shards, rows)],
        "config": cfg.model_dump(mode="json"), **about, "seconds": round(time.perf_counter() - started, 3),
    }
    storage.commit(out, manifest)
    return manifest
