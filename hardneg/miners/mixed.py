"""Mixed mode: for one set of anchors, ``geo_negatives`` from the geographic miner, the rest from similarity.

The similarity miner's candidates first lose the items closer than ``min_km`` to their anchor
(``drop_same_place``): the same place seen again is never a negative, whichever miner picks it.

Example::

    merge_negatives(np.array([[4, 5]]), np.array([[5, 7, 8]]), geo_negatives=2, num_negatives=3)
    # [[4, 5, 7]]: geographic first, then similarity negatives not already taken
"""

from __future__ import annotations

import numpy as np

from hardneg.miners.geo import haversine_km
from hardneg.miners.similarity import sort_candidates


def drop_same_place(anchor_rows: np.ndarray, candidate_rows: np.ndarray, candidate_scores: np.ndarray, lat: np.ndarray,
                    lon: np.ndarray, min_km: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Candidates without those closer than ``min_km`` to their anchor (the anchor itself stays), re-sorted.

    Args:
        anchor_rows: ``(q,)`` row of each query's anchor; ``candidate_rows``/``candidate_scores``: ``(q, k)``,
            ``-1`` = none; ``lat``/``lon``: ``(n,)`` degrees of every row.

    Returns:
        rows and scores sorted as ``mine_similarity`` wants (``sort_candidates``), and how many were dropped.

    Example::

        lat = np.zeros(3); lon = np.array([0.0, 0.001, 1.0])
        drop_same_place(np.array([0]), np.array([[0, 1, 2]]), np.array([[1.0, 0.9, 0.8]]), lat, lon, 1.0)
        # ([[0, 2, -1]], [[1.0, 0.8, nan]], 1): row 1 is 0.1 km away
    """
    valid = candidate_rows >= 0
    safe = np.where(valid, candidate_rows, 0)
    anchors = np.asarray(anchor_rows)[:, None]
    km = haversine_km(lat[anchors], lon[anchors], lat[safe], lon[safe])
    same_place = valid & (candidate_rows != anchors) & (km < min_km)
    rows, scores = sort_candidates(np.where(same_place, -1, candidate_rows),
                                   np.where(same_place, np.nan, candidate_scores))
    return rows, scores, int(same_place.sum())


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
