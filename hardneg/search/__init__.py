"""Search backends behind one small interface.

Every index answers ``search(queries, k) -> (scores (q, k) float32, rows (q, k) int64)``: inner
product, best first, ties broken by the lower row, ``-inf``/``-1`` past the corpus size.

- ``exact``: torch chunked matmul + top-k (CPU or GPU, fp16/bf16 on GPU);
- ``flat`` / ``ivf`` / ``ivfpq`` / ``hnsw``: faiss;
- ``kdtree``: scipy k-d tree, exact, for low-dimensional unit vectors (geographic mining);
- sharded (``index.num_shards > 1``): the corpus split across Ray actors, top-k merged.

Example::

    with open_index("runs/a/rounds/00000/embeddings", IndexConfig(backend="hnsw")) as index:
        scores, rows = index.search(query_vectors, k=50)
"""

from __future__ import annotations

import io

import numpy as np

from hardneg.config import IndexConfig
from hardneg.search.base import Index
from hardneg.search.exact import ExactIndex, exact_search, merge_topk, resolve_device
from hardneg.search.faiss_index import FaissIndex
from hardneg.search.kdtree import KDTreeIndex
from hardneg.search.files import embedding_files, read_embeddings, vectors_of
from hardneg.search.sharded import ShardedIndex

__all__ = [
    "ExactIndex", "FaissIndex", "Index", "KDTreeIndex", "ShardedIndex", "build_index", "embedding_files", "exact_search", "load_index",
    "merge_topk", "open_index", "read_embeddings", "recall_at_k", "resolve_device", "vectors_of",
]


def build_index(corpus: np.ndarray, cfg: IndexConfig) -> Index:
    """An in-process index over ``corpus`` for ``cfg.backend``."""
    if cfg.backend == "exact":
        return ExactIndex(corpus, cfg.chunk_size, cfg.device, "float16" if resolve_device(cfg.device) == "cuda" else "float32")
    if cfg.backend == "kdtree":
        return KDTreeIndex(corpus)
    return FaissIndex(corpus, cfg)


def load_index(data: bytes, cfg: IndexConfig) -> Index:
    """The index ``to_bytes`` wrote."""
    if cfg.backend in ("exact", "kdtree"):
        return build_index(np.load(io.BytesIO(data), allow_pickle=False), cfg)
    import faiss

    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    return FaissIndex(np.zeros((0, index.d), np.float32), cfg, index=index)


def open_index(embeddings_dir: str, cfg: IndexConfig) -> Index:
    """The index over a committed embeddings folder: in-process for one shard, Ray actors for several."""
    if cfg.num_shards > 1:
        return ShardedIndex(embeddings_dir, cfg)
    _, vectors = read_embeddings(embeddings_dir)
    return build_index(vectors, cfg)


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
