"""Search backends behind one small interface (``Index``: ``search``, ``close``, a context manager).

Every index answers ``search(queries, k) -> (scores (q, k) float32, rows (q, k) int64)``: inner
product, best first, ties broken by the lower row, ``-inf``/``-1`` past the corpus size.

- ``exact``: torch chunked matmul + top-k (CPU or GPU, fp16/bf16 on GPU);
- ``flat`` / ``ivf`` / ``ivfpq`` / ``hnsw``: faiss;
- ``kdtree``: scipy k-d tree, exact, for low-dimensional unit vectors (geographic mining);
- sharded (``index.num_shards > 1``): the corpus split across Ray actors, top-k merged.

A round's index is built once from its embedding shards and persisted (``hardneg.search.stored``,
written by ``hardneg.pipelines.index``); ``open_index`` opens such a folder.

Example::

    with open_index("runs/a/rounds/00000/index", IndexConfig()) as index:
        scores, rows = index.search(query_vectors, k=50)
"""

from __future__ import annotations

import numpy as np

from hardneg.search.base import Index
from hardneg.search.build import build_index, load_index
from hardneg.search.exact import ExactIndex, exact_search, merge_topk, pad_to, resolve_device
from hardneg.search.faiss_index import FaissIndex
from hardneg.search.files import embedding_files, read_embeddings, vectors_of
from hardneg.search.kdtree import KDTreeIndex
from hardneg.search.sharded import ShardedIndex, split_files
from hardneg.search.stored import index_manifest, open_index, shard_name, write_shard

__all__ = [
    "ExactIndex", "FaissIndex", "Index", "KDTreeIndex", "ShardedIndex", "build_index", "embedding_files", "exact_search",
    "exact_search_files", "index_manifest", "load_index", "merge_topk", "open_index", "read_embeddings", "recall_at_k",
    "resolve_device", "shard_name", "split_files", "vectors_of", "write_shard",
]


def exact_search_files(embeddings_dir: str, queries: np.ndarray, k: int, chunk_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` over a committed embeddings folder, one file in memory at a time (global rows).

    The reference an approximate index is measured against (``recall_at_k``).
    """
    scores = np.zeros((len(queries), 0), np.float32)
    rows = np.zeros((len(queries), 0), np.int64)
    offset = 0
    for url, count in embedding_files(embeddings_dir):
        _, vectors = read_embeddings(url, [(url, count)])
        file_scores, file_rows = exact_search(queries, vectors, k, chunk_size)
        scores = np.concatenate([scores, file_scores], 1)
        rows = np.concatenate([rows, np.where(file_rows >= 0, file_rows + offset, -1)], 1)
        scores, rows = merge_topk(scores, rows, k)
        offset += count
    return pad_to(scores, rows, k)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean over queries of ``|approx ∩ exact| / |exact|`` (padding ``-1`` ignored).

    Example::

        recall_at_k(np.array([[1, 2]]), np.array([[1, 3]]))   # 0.5
    """
    hits = []
    for approx, exact in zip(approx_rows, exact_rows):
        truth = exact[exact >= 0]
        if len(truth):
            hits.append(len(np.intersect1d(approx, truth)) / len(truth))
    return float(np.mean(hits)) if hits else 1.0
