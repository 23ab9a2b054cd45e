"""The mine stage: search each query's neighbours, run the similarity miner, write the round's table.

The corpus embeddings stay in storage (or in the search shards' actors); the driver holds the
query embeddings, the corpus ids, texts and groups, and one batch of candidates at a time.

Output (``rounds/NNNNN/mined/``), one row per (query, positive) pair, the schema of DESIGN.md:
``query_id``, ``query``, ``positive_id``, ``positive``, ``positive_score``, ``negative_ids``,
``negatives``, ``negative_scores``, ``round``, ``encoder``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from hardneg import console, storage
from hardneg.config import RunConfig
from hardneg.miners import FILTERS, Ragged, hash_texts, mine_similarity
from hardneg.pipelines.inputs import Inputs, group_codes, load_corpus
from hardneg.pipelines.write import kept_rows
from hardneg.search import Index, embedding_files, exact_search_files, open_index, read_embeddings, recall_at_k

logger = logging.getLogger(__name__)

@dataclass
class CorpusView:
    """The corpus in embedding-row order: what the miner and the writer look up by row."""

    ids: pa.Array
    texts: pa.Array
    text_hash: np.ndarray
    groups: np.ndarray
    files: list

    def rows_of(self, ids) -> np.ndarray:
        return pd.Index(self.ids.to_numpy(zero_copy_only=False)).get_indexer(pd.Index(ids))


def corpus_view(inputs: Inputs, embeddings_dir: str) -> CorpusView:
    """Align the prepared corpus (ids, texts, groups) with the rows of the embedding shards."""
    files = embedding_files(embeddings_dir)
    ids = pa.concat_arrays([
        storage.read_table_file(storage.resolve(url), ["id"]).column("id").cast(pa.string()).combine_chunks() for url, _ in files
    ])
    table = load_corpus(inputs.corpus, inputs.corpus_cfg)
    order = pd.Index(table.column("id").to_numpy(zero_copy_only=False)).get_indexer(ids.to_numpy(zero_copy_only=False))
    if (order < 0).any():
        raise storage.StorageError(f"{embeddings_dir}: {int((order < 0).sum())} embedded ids are not in the corpus; re-embed")
    table = table.take(pa.array(order))
    groups = table.column("group") if "group" in table.column_names else None
    texts = table.column("text").combine_chunks()
    return CorpusView(ids, texts, hash_texts(texts.to_pylist()), group_codes(groups, table.num_rows), files)


def gather_vectors(files: list[tuple[str, int]], rows: np.ndarray) -> np.ndarray:
    """Embeddings of the given global rows, reading one shard file at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    out = None
    start = 0
    for url, count in files:
        inside = np.flatnonzero((rows >= start) & (rows < start + count))
        if len(inside):
            _, vectors = read_embeddings(url, [(url, count)])
            out = np.empty((len(rows), vectors.shape[1]), np.float32) if out is None else out
            out[inside] = vectors[rows[inside] - start]
        start += count
    return out


def mine_queries(cfg: RunConfig, inputs: Inputs, embeddings_dir: str, query_embeddings_dir: str, index_dir: str) -> dict:
    """Search (the committed index ``index_dir``) and mine every query. Returns arrays (per query and per pair) and figures."""
    timings = {}
    started = time.perf_counter()
    view = corpus_view(inputs, embeddings_dir)
    queries = inputs.queries
    query_ids, query_vectors = read_embeddings(query_embeddings_dir)
    query_rows = pd.Index(query_ids).get_indexer(queries.column("query_id").to_numpy(zero_copy_only=False))
    if (query_rows < 0).any():
        raise storage.StorageError(f"{query_embeddings_dir}: {int((query_rows < 0).sum())} queries have no vector")
    query_vectors = query_vectors[query_rows]

    positive_lists = queries.column("positive_ids").combine_chunks()
    offsets = positive_lists.offsets.to_numpy()
    positive_rows = view.rows_of(positive_lists.values.to_numpy(zero_copy_only=False))
    pair_query = np.repeat(np.arange(queries.num_rows), np.diff(offsets))
    unique_rows, inverse = np.unique(positive_rows, return_inverse=True)
    positive_vectors = gather_vectors(view.files, unique_rows)[inverse]
    pair_scores = np.einsum("ij,ij->i", query_vectors[pair_query], positive_vectors).astype(np.float32)
    scorer = query_texts = None
    if cfg.mine.cross_encoder:
        from hardneg.pipelines.rescore import CrossEncoderScorer

        scorer = CrossEncoderScorer(cfg.mine.cross_encoder, cfg.mine.cross_encoder_batch_size, device=cfg.index.device,
                                    trust_remote_code=cfg.model.trust_remote_code)
        query_texts = queries.column("query").to_pylist()
        positive_texts = view.texts.take(pa.array(positive_rows)).to_pylist()
        pair_scores = scorer.score([query_texts[i] for i in pair_query], positive_texts)
    # ST's margins compare against the query's hardest (lowest-scoring) positive.
    hardest = np.minimum.reduceat(pair_scores, offsets[:-1]).astype(np.float32)
    forbidden_offsets, forbidden = _forbidden_hashes(queries, view.text_hash[positive_rows], offsets)
    query_groups = view.groups[positive_rows[offsets[:-1]]]
    timings["prepare"] = time.perf_counter() - started

    started = time.perf_counter()
    num_queries, n = queries.num_rows, cfg.mine.num_negatives
    negative_rows = np.full((num_queries, n), -1, dtype=np.int64)
    negative_scores = np.full((num_queries, n), np.nan, dtype=np.float32)
    removed = dict.fromkeys(FILTERS, 0)
    search_seconds = mine_seconds = 0.0
    step = cfg.index.query_batch_size
    with open_index(index_dir, cfg.index) as index:
        timings["load_index"] = time.perf_counter() - started
        max_positives = int(np.diff(offsets).max())
        params = cfg.mine.model_copy(update={"range_max": cfg.mine.window_end(max_positives)})
        depth = min(params.range_max + max_positives, index.ntotal)
        for batch, lo in enumerate(console.progress(range(0, num_queries, step), "search + mine", total=-(-num_queries // step))):
            hi = min(lo + step, num_queries)
            t0 = time.perf_counter()
            scores, rows = index.search(query_vectors[lo:hi], depth)
            if scorer is not None:
                rows, scores = scorer.rescore_candidates(query_texts[lo:hi], rows, view.texts)
            t1 = time.perf_counter()
            result = mine_similarity(
                rows, scores, Ragged(offsets[lo:hi + 1] - offsets[lo], positive_rows[offsets[lo]:offsets[hi]]), hardest[lo:hi],
                params, corpus_groups=view.groups, query_groups=query_groups[lo:hi], corpus_text_hash=view.text_hash,
                query_forbidden_hashes=Ragged(forbidden_offsets[lo:hi + 1] - forbidden_offsets[lo],
                                              forbidden[forbidden_offsets[lo]:forbidden_offsets[hi]]),
                seed=cfg.mine.seed + batch,
            )
            negative_rows[lo:hi], negative_scores[lo:hi] = result.negative_rows, result.negative_scores
            for name, count in result.removed.items():
                removed[name] += count
            search_seconds += t1 - t0
            mine_seconds += time.perf_counter() - t1
        recall = search_recall(cfg, index, embeddings_dir, query_vectors, depth)
    timings["search"], timings["mine"] = search_seconds, mine_seconds
    counts = (negative_rows >= 0).sum(axis=1)
    return {
        "view": view, "negative_rows": negative_rows, "negative_scores": negative_scores, "counts": counts,
        "positive_rows": positive_rows, "pair_query": pair_query, "pair_scores": pair_scores,
        "removed": removed, "recall": recall, "depth": depth, "timings": timings,
        "scored_by": "cross-encoder " + cfg.mine.cross_encoder if scorer is not None else "bi-encoder",
    }


def _forbidden_hashes(queries: pa.Table, positive_hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: its positives' text hashes and its own text's hash (a Ragged's offsets and values)."""
    query_hash = hash_texts(queries.column("query").to_pylist())
    sizes = np.diff(offsets) + 1
    out_offsets = np.concatenate([[0], np.cumsum(sizes)])
    values = np.empty(out_offsets[-1], dtype=np.uint64)
    values[out_offsets[1:] - 1] = query_hash
    mask = np.ones(len(values), dtype=bool)
    mask[out_offsets[1:] - 1] = False
    values[mask] = positive_hashes
    return out_offsets, values


def search_recall(cfg: RunConfig, index: Index, embeddings_dir: str, query_vectors: np.ndarray, depth: int):
    """recall@depth of an approximate ``index`` against exact search over the embedding files, on a sample
    of queries (None when the index is exact)."""
    if index.backend in ("exact", "kdtree") or cfg.index.recall_sample == 0:
        return None
    rng = np.random.default_rng(cfg.mine.seed)
    sample = np.sort(rng.choice(len(query_vectors), size=min(cfg.index.recall_sample, len(query_vectors)), replace=False))
    _, exact_rows = exact_search_files(embeddings_dir, query_vectors[sample], depth, cfg.index.chunk_size)
    _, approx_rows = index.search(query_vectors[sample], depth)
    return {"k": depth, "queries": len(sample), "recall": round(float(recall_at_k(approx_rows, exact_rows)), 4)}


def mined_table(mined: dict, queries: pa.Table, cfg: RunConfig, round_index: int, encoder: str) -> pa.Table:
    """One row per (query, positive) pair, the DESIGN.md schema; ``on_short=drop`` drops short queries."""
    view, rows, scores, counts = mined["view"], mined["negative_rows"], mined["negative_scores"], mined["counts"]
    pair_query = mined["pair_query"]
    keep = kept_rows(cfg, counts)[pair_query]
    pairs = np.flatnonzero(keep)
    owner = pair_query[pairs]
    present = rows[owner] >= 0
    flat_rows = rows[owner][present]
    list_offsets = pa.array(np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int32))
    take = pa.array(flat_rows)
    positive_rows = pa.array(mined["positive_rows"][pairs])
    return pa.table({
        "query_id": queries.column("query_id").take(pa.array(owner)),
        "query": queries.column("query").take(pa.array(owner)),
        "positive_id": view.ids.take(positive_rows),
        "positive": view.texts.take(positive_rows),
        "positive_score": pa.array(mined["pair_scores"][pairs], pa.float32()),
        "negative_ids": pa.ListArray.from_arrays(list_offsets, view.ids.take(take)),
        "negatives": pa.ListArray.from_arrays(list_offsets, view.texts.take(take)),
        "negative_scores": pa.ListArray.from_arrays(list_offsets, pa.array(scores[owner][present], pa.float32())),
        "round": pa.array(np.full(len(pairs), round_index, np.int32)),
        "encoder": pa.array([encoder] * len(pairs), pa.string()),
    })


