"""The mine stage on Ray: query embeddings in, the round's mined table out. The driver holds the plan.

One Ray Data task per query-embedding file, run by a pool of ``MineActor``s:

1. the file's query vectors, and its queries' texts and positives, read from ``inputs/queries``
   keeping only the file's own ids (held-out queries left out), in input order;
2. per batch of ``index.query_batch_size`` queries: search the corpus shards
   (``hardneg.pipelines.corpus_shards``), rescore with the cross-encoder when there is one, run the
   similarity miner over the candidates' text and group hashes, and look the chosen rows' ids and
   texts up in the shards;
3. the file's rows written as one Parquet file named after its first query's input row, so the
   files in name order hold the rows in input order; one row of figures (counts, removals, a
   bounded sample of scores) goes back to the driver.

The cross-encoder (``mine.cross_encoder``) runs in its own actor pool when there is one
(``mine.cross_encoder_actors``; by default one actor per GPU): the MineActors send it their candidates.
On a cluster without GPUs each MineActor loads the cross-encoder itself.

With one index shard the single MineActor holds the shard itself (no Ray hop per batch: the laptop
case); with several, each shard is a Ray actor that every MineActor calls. Nothing here grows with
the corpus or the queries in the driver: it holds the plan and one figures row per file.

Output (``rounds/NNNNN/mined/``), one row per (query, positive) pair, the schema of DESIGN.md:
``query_id``, ``query``, ``positive_id``, ``positive``, ``positive_score``, ``negative_ids``,
``negatives``, ``negative_scores``, ``round``, ``encoder``.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hardneg import storage
from hardneg.config import IndexConfig, MineConfig, RunConfig
from hardneg.corpus import ValidatedCorpus
from hardneg.errors import StorageError
from hardneg.miners import Ragged, hash_texts, mine_similarity
from hardneg.pipelines.corpus_shards import CorpusShard, ShardSet, corpus_shard_kwargs, open_shards
from hardneg.pipelines.figures import Tally, per_query_histogram, similarity_figures
from hardneg.pipelines.write import kept_rows
from hardneg.ray_runtime import in_process, run_jobs
from hardneg.rundir import timing
from hardneg.search import Index, embedding_files, exact_search_files, index_manifest, read_embeddings, recall_at_k

logger = logging.getLogger(__name__)

def mined_schema(values: pa.DataType = pa.string(), query: pa.DataType = pa.string()) -> pa.Schema:
    """The mined table's schema; ``positive`` and ``negatives`` hold the corpus' ``values``: texts, or the images
    of a corpus of images as given (paths or URLs, or bytes); ``query`` the queries' texts, or images as given."""
    return pa.schema([
        ("query_id", pa.string()), ("query", query), ("positive_id", pa.string()), ("positive", values),
        ("positive_score", pa.float32()), ("negative_ids", pa.list_(pa.string())), ("negatives", pa.list_(values)),
        ("negative_scores", pa.list_(pa.float32())), ("round", pa.int32()), ("encoder", pa.string()),
    ])

@dataclass(frozen=True)
class MinePlan:
    """Everything a MineActor needs, small and picklable (no data)."""

    cfg: RunConfig
    params: MineConfig  # cfg.mine with the round's range_max
    depth: int
    queries_dir: str
    out_dir: str
    files: list  # [[(url, rows), ...] per task]: the query-embedding files
    heldout: frozenset
    round_index: int
    encoder: str
    starts: list
    shard_kwargs: Optional[dict]  # set when the MineActor holds the only shard itself
    storage_options: dict
    threads: int = 1  # torch threads of a MineActor that builds its shard (one per CPU, at most 8)
    miner: str = "similarity"  # the strategy: its shards and its task (``strategy``)
    similarity: Optional[IndexConfig] = None  # the mixed miner's similarity index (the plan's own cfg.index is the geographic one)


def strategy(miner: str) -> tuple[type, Callable]:
    """What the mine stage runs for ``miner``: the shard class its candidates come from (the corpus' embeddings,
    or the places' coordinates) and its task, ``(plan, ShardSet, scorer, task) -> figures`` (rows written)."""
    if miner == "geographic":
        from hardneg.pipelines.place_shards import PlaceShard, mine_place_file

        return PlaceShard, mine_place_file
    if miner == "mixed":
        from hardneg.pipelines.mixed import mine_mixed_file
        from hardneg.pipelines.place_shards import PlaceShard

        return PlaceShard, mine_mixed_file
    return CorpusShard, mine_file


class MineActor:
    """A Ray Data callable class: ``{"task": [i]}`` in, that task's figures row out (its rows are written);
    a task that returns arrays (the geographic miner's negatives) sends them as ``np.savez`` bytes."""

    def __init__(self, plan: MinePlan, shards: list, scorers: Sequence = ()):
        storage.restore_options(plan.storage_options)
        shard_class, self.task = strategy(plan.miner)
        if plan.shard_kwargs is not None:
            import torch

            torch.set_num_threads(plan.threads)
            shards = [shard_class(**plan.shard_kwargs)]
        self.plan = plan
        self.shards = ShardSet(shards, plan.starts)
        self.scorer = None
        cfg = plan.cfg
        if scorers:  # the cross-encoder's own actor pool
            from hardneg.pipelines.rescore import ScorerPool

            self.scorer = ScorerPool(scorers)
        elif cfg.mine.cross_encoder and plan.miner == "similarity":
            from hardneg.pipelines.rescore import CrossEncoderScorer

            self.scorer = CrossEncoderScorer(cfg.mine.cross_encoder, cfg.mine.cross_encoder_batch_size, device=cfg.index.device,
                                             trust_remote_code=cfg.model.trust_remote_code)

    def __call__(self, batch: pa.Table) -> pa.Table:
        task = int(batch.column("task")[0].as_py())
        stats = self.task(self.plan, self.shards, self.scorer, task)
        arrays = stats.pop("arrays", b"")
        return pa.table({"task": [task], "stats": [json.dumps(stats)], "arrays": pa.array([arrays], pa.binary())})


def own_queries(queries_dir: str, ids: np.ndarray, heldout: frozenset) -> pa.Table:
    """The rows of ``inputs/queries`` whose ids are in ``ids`` and not held out, plus ``order`` (their input row)."""
    wanted = pa.array(ids, pa.string())
    left_out = pa.array(sorted(heldout), pa.string())
    pieces, offset = [], 0
    tables = (table for loc in storage.list_table_files(queries_dir)
              for _, table in storage.iter_table_file(loc, ["query_id", "query", "positive_ids"]))
    for table in tables:
        keep = pc.and_(pc.is_in(table.column("query_id"), value_set=wanted),
                       pc.invert(pc.is_in(table.column("query_id"), value_set=left_out)))
        rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
        pieces.append(table.take(pa.array(rows)).append_column("order", pa.array(rows + offset, pa.int64())))
        offset += table.num_rows
    return pa.concat_tables(pieces)


def mine_file(plan: MinePlan, shards: ShardSet, scorer, task: int) -> dict:
    """Mine the queries of one query-embedding file and write their rows; returns its figures."""
    files = plan.files[task]
    ids, vectors = read_embeddings("", files)
    queries = own_queries(plan.queries_dir, ids, plan.heldout)
    vectors = vectors[pd.Index(ids).get_indexer(pd.Index(queries.column("query_id").to_numpy(zero_copy_only=False)))]
    tables, stats = [], Tally(plan.params.num_negatives)
    step = plan.cfg.index.query_batch_size
    order = queries.column("order").to_numpy()
    for lo in range(0, queries.num_rows, step):
        table, batch_stats = mine_batch(plan, shards, scorer, queries.slice(lo, step), vectors[lo:lo + step],
                                        seed=plan.params.seed + int(order[lo]) // step)
        tables.append(table)
        stats.add(**batch_stats)
    rows = sum(t.num_rows for t in tables)
    if rows:
        name = f"part-{int(order[0]):012d}.parquet"
        storage.write_parquet(pa.concat_tables(tables), storage.resolve(plan.out_dir).join(name))
    return stats.result(seed=int(order[0]) if len(order) else 0)


def mine_batch(plan: MinePlan, shards: ShardSet, scorer, queries: pa.Table, vectors: np.ndarray, seed: int) -> tuple[pa.Table, dict]:
    """One batch of queries: search, [rescore], mine, and their rows with ids and texts looked up; plus its figures."""
    lists = queries.column("positive_ids").combine_chunks()
    sizes = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    positive_rows = shards.find(pc.list_flatten(lists).to_numpy(zero_copy_only=False))
    if (positive_rows < 0).any():
        raise StorageError(f"{int((positive_rows < 0).sum())} positives have no embedding in the round's index; re-embed the corpus")
    pair_query = np.repeat(np.arange(queries.num_rows), sizes)
    query_texts = queries.column("query").to_pylist()
    scores, rows = shards.search(vectors, plan.depth)
    if scorer is not None:
        candidates = np.unique(rows[rows >= 0])
        local = np.where(rows >= 0, np.searchsorted(candidates, rows), -1)
        local, scores = scorer.rescore_candidates(query_texts, local, shards.texts_of(candidates)[1])
        rows = np.where(local >= 0, candidates[np.maximum(local, 0)], -1)
    # The miner sees the batch's own small corpus: every candidate and positive, numbered in ``known``.
    known = np.unique(np.concatenate([rows[rows >= 0], positive_rows]))
    text_hash, groups, known_vectors = shards.gather("facts", known)
    positive_local = np.searchsorted(known, positive_rows)
    if scorer is not None:
        pair_scores = scorer.score([query_texts[i] for i in pair_query], shards.texts_of(positive_rows)[1].to_pylist())
    else:
        pair_scores = np.einsum("ij,ij->i", vectors[pair_query], known_vectors[positive_local]).astype(np.float32)
    # ST's margins compare against the query's hardest (lowest-scoring) positive.
    hardest = np.minimum.reduceat(pair_scores, offsets[:-1]).astype(np.float32)
    result = mine_similarity(
        np.where(rows >= 0, np.searchsorted(known, rows), -1), scores, Ragged(offsets, positive_local), hardest, plan.params,
        corpus_groups=groups, query_groups=groups[positive_local[offsets[:-1]]], corpus_text_hash=text_hash,
        query_forbidden_hashes=forbidden_hashes(query_texts, text_hash[positive_local], offsets), seed=seed,
    )
    local_negatives = result.negative_rows[pair_query]
    same_text = (text_hash[np.maximum(local_negatives, 0)] == text_hash[positive_local][:, None]) & (local_negatives >= 0)
    negatives = np.where(result.negative_rows >= 0, known[np.maximum(result.negative_rows, 0)], -1)
    table = pair_rows(plan, shards, queries, negatives, result.negative_scores, result.counts, pair_query, positive_rows, pair_scores)
    return table, {"per_query": per_query_histogram(result.counts, plan.params.num_negatives), "rows": table.num_rows,
                   "sums": {"removed": result.removed, "same_text": int(same_text.sum())},
                   "samples": {"positive_scores": pair_scores, "negative_scores": result.negative_scores[~np.isnan(result.negative_scores)]}}


def forbidden_hashes(query_texts: list, positive_hashes: np.ndarray, offsets: np.ndarray) -> Ragged:
    """Per query: its positives' text hashes and its own text's hash."""
    sizes = np.diff(offsets) + 1
    out_offsets = np.concatenate([[0], np.cumsum(sizes)])
    values = np.empty(out_offsets[-1], dtype=np.uint64)
    values[out_offsets[1:] - 1] = hash_texts(query_texts)
    mask = np.ones(len(values), dtype=bool)
    mask[out_offsets[1:] - 1] = False
    values[mask] = positive_hashes
    return Ragged(out_offsets, values)


def pair_rows(plan: MinePlan, shards: ShardSet, queries: pa.Table, negatives: np.ndarray, negative_scores: np.ndarray,
              counts: np.ndarray, pair_query: np.ndarray, positive_rows: np.ndarray, pair_scores: np.ndarray) -> pa.Table:
    """One row per (query, positive) pair, the DESIGN.md schema; ``on_short=drop`` drops short queries."""
    pairs = np.flatnonzero(kept_rows(plan.cfg, counts)[pair_query])
    owner = pair_query[pairs]
    present = negatives[owner] >= 0
    flat = negatives[owner][present]
    need = np.unique(np.concatenate([flat, positive_rows[pairs]]))
    ids, texts = shards.texts_of(need)
    take_negatives = pa.array(np.searchsorted(need, flat))
    take_positives = pa.array(np.searchsorted(need, positive_rows[pairs]))
    list_offsets = pa.array(np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int32))
    return pa.table({
        "query_id": queries.column("query_id").take(pa.array(owner)),
        "query": queries.column("query").take(pa.array(owner)),
        "positive_id": ids.take(take_positives),
        "positive": texts.take(take_positives),
        "positive_score": pa.array(pair_scores[pairs], pa.float32()),
        "negative_ids": pa.ListArray.from_arrays(list_offsets, ids.take(take_negatives)),
        "negatives": pa.ListArray.from_arrays(list_offsets, texts.take(take_negatives)),
        "negative_scores": pa.ListArray.from_arrays(list_offsets, pa.array(negative_scores[owner][present], pa.float32())),
        "round": pa.array(np.full(len(pairs), plan.round_index, np.int32)),
        "encoder": pa.array([plan.encoder] * len(pairs), pa.string()),
    }, schema=mined_schema(texts.type, queries.schema.field("query").type))


def query_files(query_embeddings_dir: str) -> list[list[tuple[str, int]]]:
    """The mine stage's tasks: one per query-embedding file with rows."""
    return [[(url, rows)] for url, rows in embedding_files(query_embeddings_dir) if rows]


def mine_stage(cfg: RunConfig, corpus: ValidatedCorpus, corpus_cfg, here: storage.Location, round_index: int, encoder: str,
               heldout: frozenset, expected_queries: int, max_positives: int) -> dict:
    """Mine every query of the round and commit ``here/mined``; returns its manifest (rows, figures, stages).

    On Ray, or with ``in_process`` by one ``MineActor`` in this process that holds every shard itself."""
    started = time.perf_counter()
    params = cfg.mine.model_copy(update={"range_max": cfg.mine.window_end(max_positives)})
    tasks = query_files(here.join("query_embeddings").url)
    mined_dir = storage.prepare_output(here.join("mined"))
    index_dir, embeddings_dir = here.join("index").url, here.join("embeddings").url
    index = index_manifest(index_dir)
    here_only = in_process()
    depth = min(params.range_max + max_positives, index["rows"])
    tally = Tally(params.num_negatives)
    kwargs, starts = corpus_shard_kwargs(cfg.index, corpus, corpus_cfg, embeddings_dir, index_dir, index)
    plan = MinePlan(cfg=cfg, params=params, depth=depth, queries_dir=storage.resolve(cfg.run_dir).join("inputs", "queries").url,
                    out_dir=mined_dir.url, files=tasks, heldout=heldout, round_index=round_index, encoder=encoder,
                    starts=starts, shard_kwargs=None, storage_options=storage.s3_options())
    scorer_actors = 0 if here_only else cross_encoder_pool_size(cfg, _resources())
    for row in run_tasks(plan, kwargs, scorer_actors):
        tally.add(**json.loads(row["stats"]))
    mined_seconds = time.perf_counter() - started
    queries = int(tally.per_query.sum())
    if queries != expected_queries:
        raise StorageError(f"{here.join('query_embeddings').url}: {expected_queries - queries} of {expected_queries} queries have no "
                           "vector; re-embed the queries")
    started = time.perf_counter()
    stages = {"mine": timing(mined_seconds, queries)}
    recall = None
    if index["backend"] not in ("exact", "kdtree") and cfg.index.recall_sample:
        job = (cfg, index_dir, embeddings_dir, here.join("query_embeddings").url, depth, storage.s3_options())
        recall = run_jobs(search_recall_task, [job])[0]
        stages["recall_check"] = timing(time.perf_counter() - started, recall["queries"])
    figures = {**similarity_figures(tally), "candidates_per_query": depth, "recall": recall,
               "scored_by": "cross-encoder " + cfg.mine.cross_encoder if cfg.mine.cross_encoder else "bi-encoder"}
    if cfg.mine.cross_encoder:
        figures["cross_encoder_actors"] = scorer_actors  # 0: loaded by each MineActor (or in process)
    if not tally.rows:  # every query dropped (on_short=drop): an empty table, so readers find the schema
        storage.write_parquet(mined_schema().empty_table(), mined_dir.join(f"part-{0:012d}.parquet"))
    parts = len(storage.list_table_files(mined_dir.url))
    manifest = {
        "kind": "mined", "round": round_index, "encoder": encoder, "rows": tally.rows, "parts": parts, "figures": figures,
        "stages": stages,
        "seconds": round(mined_seconds + time.perf_counter() - started, 3),
    }
    storage.commit(mined_dir, manifest)
    return manifest


def run_tasks(plan: MinePlan, kwargs: list[dict], scorer_actors: int = 0) -> Iterator[dict]:
    """The figures rows (``task``, ``stats``, ``arrays``) of every task of ``plan``, its shards built from ``kwargs``:
    in this process by one ``MineActor`` holding every shard (``in_process``), or on Ray (``_mine_on_ray``)."""
    shard_class = strategy(plan.miner)[0]
    one_shard = len(kwargs) == 1
    with open_shards(shard_class, kwargs, plan.cfg.index.device, in_process=one_shard or in_process()) as actors:
        if in_process():
            actor = MineActor(plan, [shard_class(**kw) for kw in kwargs])
            for task in range(len(plan.files)):
                yield actor(pa.table({"task": [task]})).to_pylist()[0]
            return
        plan = replace(plan, shard_kwargs=kwargs[0] if one_shard else None)
        yield from _mine_on_ray(plan.cfg, plan, actors, one_shard, _resources(), scorer_actors)


def _resources() -> dict:
    from hardneg.resources import cluster_resources

    return cluster_resources()


def _mine_on_ray(cfg: RunConfig, plan: MinePlan, actors: list, one_shard: bool, resources: dict, scorer_actors: int):
    """The figures rows of a Ray Data run of ``MineActor``s over the plan's tasks (one actor holding the only
    shard, or one per CPU calling the shard actors), with ``scorer_actors`` cross-encoder actors beside them."""
    import ray

    if not plan.files:
        return
    cpus = int(max(1, resources.get("CPU", 1)))
    plan = replace(plan, threads=min(cpus, 8))
    size = 1 if one_shard else max(1, min(len(plan.files), cpus))
    gpus = bool(resources.get("GPU")) and cfg.index.device != "cpu"
    with _cross_encoder_actors(cfg, scorer_actors, gpus) as scorers:
        on_gpu = gpus and (one_shard or (bool(cfg.mine.cross_encoder) and not scorers))
        yield from ray.data.from_items([{"task": i} for i in range(len(plan.files))], override_num_blocks=len(plan.files)).map_batches(
            MineActor, batch_size=1, batch_format="pyarrow", fn_constructor_kwargs={"plan": plan, "shards": actors, "scorers": scorers},
            compute=ray.data.ActorPoolStrategy(size=size), num_cpus=1 if one_shard else 0.25, num_gpus=1 if on_gpu else 0,
        ).iter_rows()


def cross_encoder_pool_size(cfg: RunConfig, resources: dict) -> int:
    """How many cross-encoder actors the Ray mine stage starts: ``mine.cross_encoder_actors``, else one per GPU
    (none without GPUs: each MineActor then scores on its own CPU)."""
    if not cfg.mine.cross_encoder:
        return 0
    if cfg.mine.cross_encoder_actors is not None:
        return cfg.mine.cross_encoder_actors
    return int(resources.get("GPU", 0)) if cfg.index.device != "cpu" else 0


@contextmanager
def _cross_encoder_actors(cfg: RunConfig, count: int, gpus: bool) -> Iterator[list]:
    """``count`` ``CrossEncoderScorer`` actors (one GPU each on a GPU cluster), killed on exit."""
    if not count:
        yield []
        return
    import ray

    from hardneg.pipelines.rescore import CrossEncoderScorer

    actor = ray.remote(CrossEncoderScorer).options(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=-1, max_task_retries=-1)
    actors = [actor.remote(cfg.mine.cross_encoder, cfg.mine.cross_encoder_batch_size, device=cfg.index.device,
                           trust_remote_code=cfg.model.trust_remote_code) for _ in range(count)]
    try:
        yield actors
    finally:
        for a in actors:
            ray.kill(a)


def search_recall_task(cfg: RunConfig, index_dir: str, embeddings_dir: str, query_embeddings_dir: str, depth: int,
                       storage_options: dict):
    """``search_recall`` on a sample of the round's query vectors, run as a Ray task (the index opens there)."""
    from hardneg.search import open_index

    storage.restore_options(storage_options)
    files = embedding_files(query_embeddings_dir)
    total = sum(rows for _, rows in files)
    rng = np.random.default_rng(cfg.mine.seed)
    sample = np.sort(rng.choice(total, size=min(cfg.index.recall_sample, total), replace=False))
    pieces, start = [], 0
    for url, rows in files:
        inside = sample[(sample >= start) & (sample < start + rows)] - start
        if len(inside):
            pieces.append(read_embeddings("", [(url, rows)])[1][inside])
        start += rows
    with open_index(index_dir, cfg.index) as index:
        return search_recall(cfg, index, embeddings_dir, np.concatenate(pieces), depth, sampled=True)


def search_recall(cfg: RunConfig, index: Index, embeddings_dir: str, query_vectors: np.ndarray, depth: int, sampled: bool = False):
    """recall@depth of an approximate ``index`` against exact search over the embedding files, on a sample
    of queries (None when the index is exact)."""
    if index.backend in ("exact", "kdtree") or cfg.index.recall_sample == 0:
        return None
    if not sampled:
        rng = np.random.default_rng(cfg.mine.seed)
        query_vectors = query_vectors[np.sort(rng.choice(len(query_vectors), size=min(cfg.index.recall_sample, len(query_vectors)),
                                                         replace=False))]
    _, exact_rows = exact_search_files(embeddings_dir, query_vectors, depth, cfg.index.chunk_size)
    _, approx_rows = index.search(query_vectors, depth)
    return {"k": depth, "queries": len(query_vectors), "recall": round(float(recall_at_k(approx_rows, exact_rows)), 4)}
