"""Held-out evaluation: a fixed share of the queries (or of a cross-view set's places) is never mined or
trained on, and every round measures how well its encoder retrieves their positives.

The split is deterministic: queries are ranked by a hash of ``(train.seed, query_id)`` and the first
``round(train.eval_fraction * N)`` (at least one when the fraction is above 0 and there are two or
more queries) are held out. It depends only on the ids, so every round and every restart agree.
Places follow the same rule with their ``id``.

A round's evaluation uses what the round already has: its query embeddings, made by the round's
encoder, searched in the round's persisted index (``rounds/NNNNN/index/``). With the default exact
backend the figure measures the encoder alone; with an approximate one it includes the index's recall.
``rounds/NNNNN/eval/MANIFEST.json`` holds ``recall@{eval_k}``, ``ndcg@10`` and the query count.

A round over places (geographic or mixed miner) of a cross-view corpus (a ``view`` column) holds its
places out (``split_places``, as ``place_shards.write_places`` writes the round's places: the held-out ones go
to ``rounds/NNNNN/heldout/places/``): they are no anchor, no negative and in no batch. ``evaluate_places``
embeds both views of the held-out places with the round's encoder (a GPS round has no model of its own:
the encoder its block trains from) through the embed stage (``rounds/NNNNN/heldout/``), and a Ray task
retrieves each place's ``view`` by its first view among the held-out places alone: recall@1, @5, @10
(and ``train.eval_k``), nDCG at the same cut-offs, the place count. Without a ``view`` column there is
nothing to retrieve: no place is held out and there is no evaluation.

Example::

    held = heldout_ids_of(inputs.queries_url, cfg.train)
    evaluate_round(cfg, round_dir(cfg.run_dir, 1), held)["ndcg@10"]
    write_places(cfg, round_dir(cfg.run_dir, 0), holdout=True)["heldout"]   # the held-out places' count
    evaluate_places(cfg, round_dir(cfg.run_dir, 0))["recall@1"]
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hardneg import storage
from hardneg.config import RunConfig, TrainConfig
from hardneg.miners import hash_texts
from hardneg.pipelines.embed import embed_or_reuse
from hardneg.pipelines.place_shards import place_targets
from hardneg.ray_runtime import run_jobs
from hardneg.rundir import stage_timing
from hardneg.search import embedding_files, open_index, read_embeddings
from hardneg.trainers.evaluate import ranking_metrics, top_k_ids

PLACE_CUTOFFS = (1, 5, 10)  # recall@k of the held-out places (and train.eval_k)


def heldout_ids(query_ids: list[str], train_cfg: TrainConfig) -> set[str]:
    """The held-out query ids of a run (see the module docstring for the rule)."""
    query_ids = list(query_ids)
    ranked = np.argsort(rank_keys(query_ids, train_cfg.seed), kind="stable")[:_heldout_count(len(query_ids), train_cfg)]
    return {query_ids[i] for i in ranked}


def _heldout_count(total: int, train_cfg: TrainConfig) -> int:
    """How many of ``total`` queries are held out: ``train.eval_fraction`` of them, at least one of two or more."""
    if train_cfg.eval_fraction == 0 or total < 2:
        return 0
    return max(1, round(train_cfg.eval_fraction * total))


def rank_keys(query_ids, seed: int) -> np.ndarray:
    """Where each query ranks in the split: ``hash_texts`` of ``seed:query_id``."""
    return hash_texts([f"{seed}:{query_id}" for query_id in query_ids])


def heldout_ids_of(queries_url: str, train_cfg: TrainConfig, column: str = "query_id") -> frozenset[str]:
    """``heldout_ids`` of the ids (``column``) in ``queries_url`` (the committed ``inputs/queries``, or a round's
    ``places/`` with ``id``), read file by file: the driver keeps each id's 8-byte rank key, finds the cut, and
    reads the ids again to keep those below it."""
    files = storage.list_table_files(queries_url)
    keys, cut = _rank_cut(files, column, train_cfg)
    if cut is None:
        return frozenset()
    below = [key <= cut for key in keys]
    return frozenset(qid for loc, held in zip(files, below) if held.any()
                     for qid, keep in zip(_ids_of(loc, column), held.tolist()) if keep)


def _ids_of(loc: storage.Location, column: str) -> list:
    return storage.read_table_file(loc, [column]).column(column).to_pylist()


def _rank_cut(files: list[storage.Location], column: str, train_cfg: TrainConfig) -> tuple[list[np.ndarray], Optional[int]]:
    """The rank keys of each file's ids, and the largest key held out (None: none is)."""
    keys = [rank_keys(_ids_of(loc, column), train_cfg.seed) for loc in files]
    count = _heldout_count(sum(len(k) for k in keys), train_cfg)
    return keys, (np.partition(np.concatenate(keys), count - 1)[count - 1] if count else None)


def evaluate_round(cfg: RunConfig, here: storage.Location, heldout: frozenset[str]) -> dict:
    """Recall@``train.eval_k`` and nDCG@10 of the held-out queries (their ids) with this round's embeddings;
    committed once as ``here/eval/`` (a committed evaluation is read back, not redone)."""
    out = here.join("eval")
    if storage.is_committed(out):
        return storage.read_manifest(out)
    # In a Ray task: it holds every corpus id and the held-out queries' positives and vectors, the driver their ids.
    return run_jobs(_evaluate, [(cfg, here.url, heldout, storage.s3_options())])[0]


def _evaluate(cfg: RunConfig, here_url: str, heldout_ids: frozenset[str], storage_options: dict) -> dict:
    """``evaluate_round``'s work: search the held-out queries in the round's index, commit ``eval/``."""
    storage.restore_options(storage_options)
    here = storage.resolve(here_url)
    out = here.join("eval")
    started = time.perf_counter()
    queries = storage.read_table(storage.resolve(cfg.run_dir).join("inputs", "queries").url, ["query_id", "positive_ids"])
    heldout = queries.filter(pc.is_in(queries.column("query_id"), value_set=pa.array(sorted(heldout_ids), pa.string())))
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


# ---- places ----------------------------------------------------------------------------------


def split_places(staging: storage.Location, train_out: Optional[storage.Location], heldout_out: storage.Location,
                 train_cfg: TrainConfig) -> tuple[int, int]:
    """Split the places parts in ``staging`` by the held-out rule (``id``) into ``train_out`` (None: not
    written) and ``heldout_out``, part by part under the same names; returns the two counts."""
    files = storage.list_table_files(staging.url)
    keys, cut = _rank_cut(files, "id", train_cfg)
    counts = [0, 0]
    for number, loc in enumerate(files):
        part = storage.read_table_file(loc)
        held = keys[number] <= cut if cut is not None else np.zeros(part.num_rows, bool)
        for side, (out, mask) in enumerate(((train_out, ~held), (heldout_out, held))):
            if out is not None and mask.any():
                storage.write_parquet(part.filter(pa.array(mask)), out.join(loc.path.rsplit("/", 1)[-1]))
            counts[side] += int(mask.sum())
    return counts[0], counts[1]


def heldout_record(train_cfg: TrainConfig, heldout: Optional[int]) -> Optional[dict]:
    """The round manifest's ``heldout`` entry of a round over places (``heldout``: the held-out count, None: no split)."""
    if heldout is None:
        return None
    return {"fraction": train_cfg.eval_fraction, "seed": train_cfg.seed, "places": heldout}


def evaluate_places_stage(cfg: RunConfig, here: storage.Location, heldout: Optional[int], figures: dict, stages: dict,
                          model_path: Optional[str] = None) -> None:
    """``evaluate_places`` as a round's stage: ``figures["eval"]`` and ``stages["eval"]`` (nothing without held-out places)."""
    if not heldout:
        return
    started = time.perf_counter()
    figures["eval"] = evaluate_places(cfg, here, model_path)
    stages["eval"] = stage_timing(started, heldout)


def evaluate_places(cfg: RunConfig, here: storage.Location, model_path: Optional[str] = None) -> dict:
    """Recall@1/5/10 (and @``train.eval_k``) of first view -> ``view`` retrieval among the held-out places
    (``here/heldout/places/``), with the
    encoder at ``model_path`` (``cfg.model.path`` when None); committed once as ``here/eval/`` (a committed
    evaluation is read back, not redone)."""
    out = here.join("eval")
    if storage.is_committed(out):
        return storage.read_manifest(out)
    started = time.perf_counter()
    if model_path is not None:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": model_path})})
    folder = here.join("heldout")
    text, _ = embed_or_reuse(cfg, place_targets(cfg, folder.join("places"), folder.join("text_embeddings").url,
                                                folder.join("view_embeddings").url))
    held = storage.read_manifest(here.join("heldout", "places"))
    about = {"model": text["model"], "views": f"{held['values']} -> {held['view_values']}",
             "embed_seconds": time.perf_counter() - started}
    return run_jobs(_evaluate_places, [(cfg.train, here.url, about, storage.s3_options())])[0]


def _evaluate_places(train_cfg: TrainConfig, here_url: str, about: dict, storage_options: dict) -> dict:
    """``evaluate_places``' work: exact search of the first views among the views, commit ``eval/``."""
    storage.restore_options(storage_options)
    here = storage.resolve(here_url)
    started = time.perf_counter()
    text_ids, text_vectors = read_embeddings(here.join("heldout", "text_embeddings").url)
    view_ids, view_vectors = read_embeddings(here.join("heldout", "view_embeddings").url)
    own_view = pd.Index(view_ids).get_indexer(text_ids)
    text_vectors, own_view = text_vectors[own_view >= 0], own_view[own_view >= 0]
    cutoffs = sorted({*PLACE_CUTOFFS, train_cfg.eval_k})
    ranked = top_k_ids(text_vectors.astype(np.float32), view_vectors.astype(np.float32), max(cutoffs))
    relevant = [{int(row)} for row in own_view]
    metrics = {name: value for k in cutoffs for name, value in ranking_metrics(ranked, relevant, k).items()}
    manifest = {
        "kind": "eval", "of": "places", "views": about["views"], "queries": len(relevant), "candidates": len(view_ids),
        "k": train_cfg.eval_k, "model": about["model"], **{name: round(value, 4) for name, value in metrics.items()},
        "seconds": round(about["embed_seconds"] + time.perf_counter() - started, 3),
    }
    out = here.join("eval")
    storage.prepare_output(out)
    storage.commit(out, manifest)
    return manifest
