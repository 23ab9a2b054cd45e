"""Exact inner-product search with torch: chunked matmul + running top-k, CPU or GPU.

Memory is bounded by ``query_batch x chunk_size`` scores; the full query x corpus matrix is
never built. Ties are broken by the lower row, so a sharded search merges to the same answer.

Example::

    scores, rows = exact_search(queries, corpus, k=10, chunk_size=65536)
"""

from __future__ import annotations

import numpy as np
import torch

from hardneg.search.base import Index

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUERY_BATCH = 4096


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def merge_topk(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each row's candidates by descending score, then ascending row (-1 rows last)."""
    rank_rows = np.where(rows < 0, np.iinfo(np.int64).max, rows)
    order = np.lexsort((rank_rows, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def pad_to(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad to ``k`` columns with ``-inf`` scores and ``-1`` rows."""
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores, rows
    q = len(scores)
    return (np.concatenate([scores, np.full((q, missing), -np.inf, np.float32)], 1),
            np.concatenate([rows, np.full((q, missing), -1, np.int64)], 1))


class ExactIndex(Index):
    """The corpus held as one torch tensor (on ``device``, in ``dtype``), searched chunk by chunk."""

    backend = "exact"

    def __init__(self, corpus: np.ndarray, chunk_size: int = 65536, device: str = "cpu", dtype: str = "float32"):
        self.device = resolve_device(device)
        self.dtype = DTYPES[dtype] if self.device == "cuda" else torch.float32
        self.corpus = torch.from_numpy(np.ascontiguousarray(corpus, dtype=np.float32)).to(self.device, self.dtype)
        self.chunk_size = chunk_size
        self.ntotal = len(corpus)

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (q, k) float32, rows (q, k) int64)``, best first; ``-inf``/``-1`` past the corpus size."""
        outputs = [self._search_batch(queries[lo:lo + QUERY_BATCH], k) for lo in range(0, len(queries), QUERY_BATCH)]
        if not outputs:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate([s for s, _ in outputs]), np.concatenate([r for _, r in outputs])

    def _search_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device, self.dtype)
        best_scores = np.zeros((len(q), 0), np.float32)
        best_rows = np.zeros((len(q), 0), np.int64)
        for start in range(0, self.ntotal, self.chunk_size):
            chunk = self.corpus[start:start + self.chunk_size]
            scores, rows = self._chunk_topk((q @ chunk.T).float(), min(k, len(chunk)))
            best_scores = np.concatenate([best_scores, scores.cpu().numpy()], 1)
            best_rows = np.concatenate([best_rows, rows.cpu().numpy() + start], 1)
            best_scores, best_rows = merge_topk(best_scores, best_rows, k)
        return pad_to(best_scores, best_rows, k)

    @staticmethod
    def _chunk_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best of each row as ``torch.topk`` finds them, except that when scores tie at the k-th, the
        lowest indices among the tied are kept (what a stable sort keeps); the order within is left to the caller.

        A tie at the boundary shows as equal k-th and (k+1)-th scores, so only those rows are redone: the ones
        above the k-th score, then the first of the tied by index (a running count), with no full sort."""
        wide = min(k + 1, scores.shape[1])
        top_scores, top_rows = torch.topk(scores, wide, dim=1)
        if wide == k:  # the whole chunk is kept
            return top_scores, top_rows
        tied = (top_scores[:, k] == top_scores[:, k - 1]).nonzero().flatten()
        top_scores, top_rows = top_scores[:, :k], top_rows[:, :k]
        if len(tied):
            candidates = scores[tied]
            kth = top_scores[tied, k - 1:k]
            above = candidates > kth
            equal = candidates == kth
            wanted = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
            keep = above | (equal & (torch.cumsum(equal, dim=1, dtype=torch.int32) <= wanted))
            rows = keep.nonzero()[:, 1].view(len(tied), k)  # exactly k a row, in index order
            top_rows[tied], top_scores[tied] = rows, torch.gather(candidates, 1, rows)
        return top_scores, top_rows

    def to_bytes(self) -> bytes:
        import io

        buffer = io.BytesIO()
        np.save(buffer, self.corpus.float().cpu().numpy(), allow_pickle=False)
        return buffer.getvalue()


def exact_search(queries: np.ndarray, corpus: np.ndarray, k: int, chunk_size: int = 65536,
                 device: str = "cpu", dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product: ``(scores (q, k) float32, rows (q, k) int64)``.

    Example::

        exact_search(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), k=1)[1]   # [[0], [1], [2]]
    """
    return ExactIndex(corpus, chunk_size, device, dtype).search(queries, k)
