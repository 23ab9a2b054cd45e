"""Mixed mode: for one set of anchors, ``geo_negatives`` from the geographic miner, the rest from similarity.

Example::

    merge_negatives(np.array([[4, 5]]), np.array([[5, 7, 8]]), geo_negatives=2, num_negatives=3)
    # [[4, 5, 7]]: geographic first, then similarity negatives not already taken
"""

from __future__ import annotations

import numpy as np


def merge_negatives(geo_rows: np.ndarray, similarity_rows: np.ndarray, geo_negatives: int, num_negatives: int) -> np.ndarray:
    """``(q, num_negatives)`` rows: up to ``geo_negatives`` geographic ones, then similarity ones, no repeats, ``-1`` padded.

    A query with fewer geographic negatives than ``geo_negatives`` gets more similarity ones, so
    it stays full when the similarity miner has enough.
    """
    if not 0 <= geo_negatives <= num_negatives:
        raise ValueError(f"geo_negatives ({geo_negatives}) must lie in [0, num_negatives={num_negatives}]")
    q = len(geo_rows)
    candidates = np.concatenate([geo_rows[:, :geo_negatives], similarity_rows], axis=1).astype(np.int64)
    first = _first_occurrence(candidates)
    keep = (candidates >= 0) & first
    order = np.argsort(~keep, axis=1, kind="stable")[:, :num_negatives]
    merged = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(candidates, order, 1), -1)
    if merged.shape[1] < num_negatives:
        merged = np.pad(merged, ((0, 0), (0, num_negatives - merged.shape[1])), constant_values=-1)
    return merged.reshape(q, num_negatives)


def _first_occurrence(rows: np.ndarray) -> np.ndarray:
    """Per row: True where a value appears for the first time (left to right)."""
    order = np.argsort(rows, axis=1, kind="stable")
    ranked = np.take_along_axis(rows, order, 1)
    first_sorted = np.ones_like(ranked, dtype=bool)
    first_sorted[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, 1)
    return first
