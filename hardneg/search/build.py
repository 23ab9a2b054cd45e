"""Building an in-process index over vectors, and reading one back from its bytes.

Example::

    index = build_index(vectors, IndexConfig(backend="hnsw"))
    again = load_index(index.to_bytes(), IndexConfig(backend="hnsw"))
"""

from __future__ import annotations

import io

import numpy as np

from hardneg.config import IndexConfig
from hardneg.search.base import Index
from hardneg.search.exact import ExactIndex, resolve_device
from hardneg.search.faiss_index import FaissIndex
from hardneg.search.kdtree import KDTreeIndex


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
