"""faiss backends: IndexFlatIP, IVF-Flat, IVF-PQ, HNSW (inner product; GPU when faiss-gpu is installed).

Example::

    index = FaissIndex(corpus, IndexConfig(backend="ivf", nprobe=32))
    scores, rows = index.search(queries, k=10)
"""

from __future__ import annotations

import logging
import math

import numpy as np

from hardneg.config import IndexConfig
from hardneg.errors import ConfigError
from hardneg.search.base import Index
from hardneg.search.exact import merge_topk, pad_to, resolve_device

logger = logging.getLogger(__name__)

MIN_POINTS_PER_CENTROID = 39  # below this faiss warns that k-means is under-trained


def default_nlist(n: int, nlist: int | None) -> int:
    """``nlist`` or about ``4 * sqrt(n)``, capped so every list has enough training points."""
    wanted = nlist or int(4 * math.sqrt(max(n, 1)))
    return max(1, min(wanted, n // MIN_POINTS_PER_CENTROID))


def make_faiss_index(dim: int, n: int, cfg: IndexConfig):
    """An untrained faiss index for ``cfg.backend``."""
    import faiss

    metric = faiss.METRIC_INNER_PRODUCT
    if cfg.backend == "flat":
        return faiss.IndexFlatIP(dim)
    if cfg.backend == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, metric)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
        return index
    nlist = default_nlist(n, cfg.nlist)
    quantizer = faiss.IndexFlatIP(dim)
    if cfg.backend == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
    else:
        if dim % cfg.pq_m:
            raise ConfigError(f"index.pq_m={cfg.pq_m} must divide the embedding dimension {dim}")
        if n < 2 ** cfg.pq_bits:
            raise ConfigError(f"index.pq_bits={cfg.pq_bits} needs at least {2 ** cfg.pq_bits} vectors to train, got {n}")
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.pq_m, cfg.pq_bits, metric)
    index.nprobe = min(cfg.nprobe, nlist)
    return index


class FaissIndex(Index):
    """A trained and filled faiss index over ``corpus`` (float32, rows 0..n-1)."""

    def __init__(self, corpus: np.ndarray, cfg: IndexConfig, index=None):
        import faiss

        self.backend = cfg.backend
        corpus = np.ascontiguousarray(corpus, dtype=np.float32)
        if index is None:
            index = make_faiss_index(corpus.shape[1], len(corpus), cfg)
            if resolve_device(cfg.device) == "cuda" and hasattr(faiss, "StandardGpuResources"):
                index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
            if not index.is_trained:
                index.train(corpus)
            index.add(corpus)
        self.index = index
        self.ntotal = int(index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as ``exact_search``: best first, ties by lower row, ``-inf``/``-1`` padding."""
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.ntotal))
        scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
        scores, rows = merge_topk(scores, rows.astype(np.int64), k)
        return pad_to(scores, rows, k)

    def to_bytes(self) -> bytes:
        import faiss

        index = faiss.index_gpu_to_cpu(self.index) if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(self.index).__name__ else self.index
        return faiss.serialize_index(index).tobytes()
