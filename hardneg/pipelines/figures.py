"""The figures of a round, for every miner: counts, score and distance distributions, removals.

``count_figures`` is the block every miner shares; each miner adds its own distributions.

Example::

    count_figures(np.array([3, 1]), rows=2, num_negatives=3)["short_queries"]   # 1
"""

from __future__ import annotations

import numpy as np
from hardneg.miners import GeoResult

SOURCES = ("geographic", "similarity")


def count_figures(counts: np.ndarray, rows: int, num_negatives: int) -> dict:
    """Queries, written rows, negatives, negatives per query, short queries and queries without negatives."""
    return {
        "queries": int(len(counts)), "rows": int(rows), "negatives": int(counts.sum()),
        "negatives_per_query": round(float(counts.mean()), 3) if len(counts) else 0.0,
        "short_queries": int((counts < num_negatives).sum()), "queries_without_negatives": int((counts == 0).sum()),
    }


def geo_figures(result: GeoResult, rows: int, dropped: dict) -> dict:
    """Negatives per query, short and uncertified queries, removals by rule, the km distribution."""
    counts = result.counts
    km = result.negative_km[~np.isnan(result.negative_km)]
    return {
        **count_figures(counts, rows, result.negative_rows.shape[1]), "removed": result.removed, "uncertified_queries": result.uncertified, "candidates_per_query": result.depth,
        "negative_km": distribution(km), "dropped_places": dropped,
    }


def mixed_figures(merged: np.ndarray, km: np.ndarray, scores: np.ndarray, from_geo: np.ndarray, geo: dict,
                  similarity_removed: dict, rows: int, dropped: dict, depth: int, recall) -> dict:
    """Negatives per query and per source, km and score distributions (all and per source), removals per miner.
    ``geo``: the geographic half's ``removed``, ``short``, ``uncertified`` and ``depth``."""
    present = merged >= 0
    counts = present.sum(axis=1)
    by_source = {}
    for name, mask in zip(SOURCES, (present & from_geo, present & ~from_geo)):
        by_source[name] = {"negatives": int(mask.sum()), "negative_km": distribution(km[mask]),
                           "negative_scores": distribution(scores[mask])}
    return {
        **count_figures(counts, rows, merged.shape[1]), "geo_short_queries": geo["short"], "negative_km": distribution(km[present]),
        "negative_scores": distribution(scores[present]), "by_source": by_source,
        "removed": {"geographic": geo["removed"], "similarity": similarity_removed},
        "uncertified_queries": geo["uncertified"], "candidates_per_query": {"geographic": geo["depth"], "similarity": depth},
        "recall": recall, "dropped_places": dropped,
    }


def distribution(values: np.ndarray) -> dict:
    """Mean and 5/25/50/75/95th percentiles (``{}`` when empty)."""
    if len(values) == 0:
        return {}
    q = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": round(float(values.mean()), 4), **{f"p{p}": round(float(v), 4) for p, v in zip((5, 25, 50, 75, 95), q)}}
