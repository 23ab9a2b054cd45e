"""Retrieval metrics by exact inner-product search: recall@k and nDCG@k (binary relevance).

Definitions follow sentence-transformers' ``InformationRetrievalEvaluator``:
recall@k = |relevant in top k| / |relevant|; nDCG@k = DCG@k / ideal DCG@k with
gain 1 / log2(rank + 1), rank starting at 1. Both are averaged over queries.

Example::

    retrieval_metrics(np.eye(2), np.eye(2), [{0}, {1}], k=1)
    # {"recall@1": 1.0, "ndcg@1": 1.0}
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hardneg.errors import InputError


def top_k_ids(query_vecs: np.ndarray, corpus_vecs: np.ndarray, k: int, chunk_size: int = 4096) -> np.ndarray:
    """``(Q, min(k, C))`` corpus row ids by descending inner product; ties go to the lower id."""
    k = min(k, corpus_vecs.shape[0])
    out = np.empty((query_vecs.shape[0], k), dtype=np.int64)
    for start in range(0, query_vecs.shape[0], chunk_size):
        scores = query_vecs[start : start + chunk_size] @ corpus_vecs.T
        out[start : start + chunk_size] = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return out


def retrieval_metrics(
    query_vecs: np.ndarray, corpus_vecs: np.ndarray, relevant: Sequence[set[int]], k: int = 10
) -> dict[str, float]:
    """Mean recall@k and nDCG@k of exact inner-product search.

    Args:
        query_vecs: ``(Q, d)``; normalise them first for cosine similarity.
        corpus_vecs: ``(C, d)``.
        relevant: per query, the set of relevant corpus row numbers (not empty).
        k: the cut-off.

    Example::

        q = np.array([[1.0, 0.0]]); c = np.array([[0.0, 1.0], [1.0, 0.0]])
        retrieval_metrics(q, c, [{1}], k=1)   # {"recall@1": 1.0, "ndcg@1": 1.0}
    """
    query_vecs, corpus_vecs = np.asarray(query_vecs, np.float32), np.asarray(corpus_vecs, np.float32)
    if len(relevant) != query_vecs.shape[0]:
        raise InputError(f"relevant has {len(relevant)} entries for {query_vecs.shape[0]} queries")
    return ranking_metrics(top_k_ids(query_vecs, corpus_vecs, k), relevant, k)


def ranking_metrics(ranked: np.ndarray, relevant: Sequence[set[int]], k: int = 10) -> dict[str, float]:
    """Mean recall@k and nDCG@k of rankings already made (by any search backend).

    Args:
        ranked: ``(Q, >= k)`` corpus row numbers, best first (``-1`` pads past the corpus).
        relevant: per query, the set of relevant corpus row numbers (not empty).

    Example::

        ranking_metrics(np.array([[3, 1]]), [{1}], k=2)   # {"recall@2": 1.0, "ndcg@2": 0.6309...}
    """
    if len(relevant) != len(ranked):
        raise InputError(f"relevant has {len(relevant)} entries for {len(ranked)} rankings")
    empty = [row for row, ids in enumerate(relevant) if not ids]
    if empty:
        raise InputError(f"relevant: query rows {empty[:5]} have no relevant corpus row")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for row, ids in enumerate(relevant):
        hits = np.array([doc in ids for doc in ranked[row][:k]], dtype=np.float64)
        recalls.append(hits.sum() / len(ids))
        ideal = discounts[: min(len(ids), k)].sum()
        ndcgs.append((hits * discounts[: len(hits)]).sum() / ideal)
    return {f"recall@{k}": float(np.mean(recalls)), f"ndcg@{k}": float(np.mean(ndcgs))}
