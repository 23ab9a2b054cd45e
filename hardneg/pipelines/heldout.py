"""Held-out evaluation: a fixed share of the queries is never mined or trained on, and every round
measures how well its encoder retrieves their positives.

The split is deterministic: queries are ranked by a hash of ``(train.seed, query_id)`` and the first
``round(train.eval_fraction * N)`` (at least one when the fraction is above 0 and there are two or
more queries) are held out. It depends only on the ids, so every round and every restart agree.

A round's evaluation uses what the round already has: its query embeddings, made by the round's
encoder, searched in the round's persisted index (``rounds/NNNNN/index/``). With the default exact
backend the figure measures the encoder alone; with an approximate one it includes the index's recall.
``rounds/NNNNN/eval/MANIFEST.json`` holds ``recall@{eval_k}``, ``ndcg@10`` and the query count.

Example::

    train_queries, heldout_queries = split_queries(inputs.queries, cfg.train)
    evaluate_round(cfg, round_dir(cfg.run_dir, 1), heldout_queries)["ndcg@10"]
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hardneg import storage
from hardneg.config import RunConfig, TrainConfig
from hardneg.search import embedding_files, open_index, read_embeddings
from hardneg.trainers.evaluate import ranking_metrics


def heldout_ids(query_ids: list[str], train_cfg: TrainConfig) -> set[str]:
    """The held-out query ids of a run (see the module docstring for the rule)."""
    if train_cfg.eval_fraction == 0 or len(query_ids) < 2:
        return set()
    count = max(1, round(train_cfg.eval_fraction * len(query_ids)))
    ranked = sorted(query_ids, key=lambda qid: hashlib.blake2b(f"{train_cfg.seed}:{qid}".encode(), digest_size=8).digest())
    return set(ranked[:count])


def split_queries(queries: pa.Table, train_cfg: TrainConfig) -> tuple[pa.Table, pa.Table]:
    """``(train, held_out)`` rows of a prepared queries table (``query_id``, ``query``, ``positive_ids``)."""
    held = heldout_ids(queries.column("query_id").to_pylist(), train_cfg)
    mask = pc.is_in(queries.column("query_id"), value_set=pa.array(sorted(held), pa.string()))
    return queries.filter(pc.invert(mask)), queries.filter(mask)


def evaluate_round(cfg: RunConfig, here: storage.Location, heldout: pa.Table) -> dict:
    """Recall@``train.eval_k`` and nDCG@10 of the held-out queries with this round's embeddings; committed
    once as ``here/eval/`` (a committed evaluation is read back, not redone)."""
    out = here.join("eval")
    if storage.is_committed(out):
        return storage.read_manifest(out)
    import ray

    # In a Ray task: it holds every corpus id and the held-out queries' vectors, the driver nothing.
    return ray.get(ray.remote(_evaluate).options(max_retries=3).remote(cfg, here.url, heldout, storage.s3_options()))


def _evaluate(cfg: RunConfig, here_url: str, heldout: pa.Table, storage_options: dict) -> dict:
    """``evaluate_round``'s work: search the held-out queries in the round's index, commit ``eval/``."""
    storage.restore_options(storage_options)
    here = storage.resolve(here_url)
    out = here.join("eval")
    started = time.perf_counter()
    embeddings = here.join("embeddings").url
    corpus_ids = np.concatenate([
        storage.read_table_file(storage.resolve(url), ["id"]).column("id").cast(pa.string()).to_numpy(zero_copy_only=False)
        for url, _ in embedding_files(embeddings)
    ])
    query_ids, query_vectors = read_embeddings(here.join("query_embeddings").url)
    wanted = heldout.column("query_id").to_numpy(zero_copy_only=False)
    query_vectors = query_vectors[pd.Index(query_ids).get_indexer(wanted)]
    row_of = pd.Index(corpus_ids)
    relevant = [set(row_of.get_indexer(ids).tolist()) - {-1} for ids in heldout.column("positive_ids").to_pylist()]
    k = max(cfg.train.eval_k, 10)
    with open_index(here.join("index").url, cfg.index) as index:
        _, ranked = index.search(query_vectors, k)
    metrics = {**ranking_metrics(ranked, relevant, cfg.train.eval_k), **ranking_metrics(ranked, relevant, 10)}
    manifest = {
        "kind": "eval", "queries": len(wanted), "k": cfg.train.eval_k,
        **{name: round(value, 4) for name, value in metrics.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }
    storage.prepare_output(out)
    storage.commit(out, manifest)
    return manifest
