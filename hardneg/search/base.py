"""The one interface every search backend implements.

``search(queries, k) -> (scores (q, k) float32, rows (q, k) int64)``: inner product, best first,
ties broken by the lower row, ``-inf``/``-1`` past the corpus size. ``close()`` releases what the
index holds (the shard actors of a ``ShardedIndex``); an index is a context manager that closes on exit.

Example::

    with open_index("runs/a/rounds/00000/index", cfg) as index:
        scores, rows = index.search(query_vectors, k=50)
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Index(ABC):
    """A searchable corpus of ``ntotal`` rows (see the module docstring for the contract)."""

    backend: str
    ntotal: int

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (q, k) float32, rows (q, k) int64)`` of the ``k`` best rows per query."""

    def close(self) -> None:
        """Release what the index holds; in-process indexes hold nothing to release."""

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
