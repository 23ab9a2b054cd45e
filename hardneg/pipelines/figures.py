"""The figures of a round, for every miner: counts, score and distance distributions, removals.

A mine task tallies its own queries (``Tally``: a histogram of negatives per query, summed counts and a
bounded uniform sample of each distribution) and sends ``Tally.result``; the driver merges them into one
``Tally``, so it holds one figures row per task whatever the corpus size. ``count_figures`` is the block
every miner shares; ``similarity_figures``, ``geo_figures`` and ``mixed_figures`` add each miner's own.
Quantiles are exact up to ``SAMPLE`` values of a kind, and of a uniform sample of ``SAMPLE`` beyond.

Example::

    tally = Tally(num_negatives=3)
    tally.add(per_query=[0, 1, 0, 1], rows=2, samples={"negative_km": [7.5, 9.0, 12.0, 30.0]})
    count_figures(tally)["short_queries"]         # 1
    distribution(tally.values("negative_km"))["p50"]   # 10.5
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from hardneg.miners import FILTERS

SOURCES = ("geographic", "similarity")
SAMPLE = 20_000  # values of each kind kept for the figures' quantiles (exact below that many)


class Tally:
    """The figures of many tasks (or batches): a histogram of negatives per query, written rows, summed
    counts (nested dicts; a ``depth`` keeps the largest, ``add_sums``) and a uniform sample of at most
    ``SAMPLE`` values of each named kind (the ``SAMPLE`` lowest random keys: a merge of samples is a sample
    of the union, whatever order they arrive in)."""

    def __init__(self, num_negatives: int):
        self.per_query = np.zeros(num_negatives + 1, np.int64)
        self.rows = 0
        self.sums: dict = {}
        self.samples: dict[str, list[np.ndarray]] = {}

    def add(self, per_query, rows: int, sums: Optional[dict] = None, samples: Optional[dict] = None,
            keys: Optional[dict] = None) -> None:
        """One batch's figures (``keys`` None: its values get sample keys in ``result``), or a ``result`` merged in."""
        self.per_query += np.asarray(per_query, np.int64)
        self.rows += int(rows)
        add_sums(self.sums, sums or {})
        for name, values in (samples or {}).items():
            values = np.asarray(values, np.float64)
            key = np.full(len(values), np.nan) if keys is None else np.asarray(keys[name], np.float64)
            pieces = self.samples.setdefault(name, [])
            pieces.append(np.stack([key, values]))
            if keys is not None and sum(piece.shape[1] for piece in pieces) > 4 * SAMPLE:
                self.samples[name] = [self._lowest(np.concatenate(pieces, axis=1))]

    @staticmethod
    def _lowest(both: np.ndarray) -> np.ndarray:
        """The ``SAMPLE`` (key, value) columns of lowest key."""
        return both[:, np.argsort(both[0], kind="stable")[:SAMPLE]]

    def result(self, seed: int) -> dict:
        """A JSON-able dict that ``add(**merged)`` takes back (the sample keys drawn now, seeded)."""
        rng = np.random.default_rng(seed)
        out = {"per_query": self.per_query.tolist(), "rows": self.rows, "sums": self.sums, "samples": {}, "keys": {}}
        for name, pieces in self.samples.items():
            both = np.concatenate(pieces, axis=1)
            fresh = np.isnan(both[0])
            both[0, fresh] = rng.random(int(fresh.sum()))
            both = self._lowest(both)
            out["keys"][name], out["samples"][name] = both[0].tolist(), both[1].tolist()
        return out

    def values(self, name: str) -> np.ndarray:
        """The sampled values of one kind (all of them, up to ``SAMPLE``)."""
        pieces = self.samples.get(name)
        return self._lowest(np.concatenate(pieces, axis=1))[1] if pieces else np.zeros(0)


def add_sums(total: dict, sums: dict) -> None:
    """Sum ``sums`` into ``total``, nested dicts too; a ``depth`` keeps the largest."""
    for name, value in sums.items():
        if isinstance(value, dict):
            add_sums(total.setdefault(name, {}), value)
        elif name == "depth":
            total[name] = max(total.get(name, 0), value)
        else:
            total[name] = total.get(name, 0) + value


def per_query_histogram(counts: np.ndarray, num_negatives: int) -> np.ndarray:
    """How many queries found 0, 1, ..., ``num_negatives`` negatives."""
    return np.bincount(np.asarray(counts, np.int64), minlength=num_negatives + 1)


def count_figures(tally: Tally) -> dict:
    """Queries, written rows, negatives, negatives per query, short queries and queries without negatives."""
    histogram = tally.per_query
    queries, negatives = int(histogram.sum()), int((np.arange(len(histogram)) * histogram).sum())
    return {
        "queries": queries, "rows": tally.rows, "negatives": negatives,
        "negatives_per_query": round(negatives / queries, 3) if queries else 0.0,
        "short_queries": int(histogram[:-1].sum()), "queries_without_negatives": int(histogram[0]),
    }


def similarity_figures(tally: Tally) -> dict:
    """Counts, score distributions, removals by filter and the false-negative check of a similarity round."""
    return {
        **count_figures(tally),
        "positive_scores": distribution(tally.values("positive_scores")),
        "negative_scores": distribution(tally.values("negative_scores")),
        "removed": {**dict.fromkeys(FILTERS, 0), **tally.sums.get("removed", {})},
        "negatives_equal_to_positive_text": int(tally.sums.get("same_text", 0)),
    }


def geo_figures(tally: Tally, dropped: dict) -> dict:
    """Negatives per query, short and uncertified queries, removals by rule, the km distribution."""
    sums = tally.sums
    return {
        **count_figures(tally), "removed": sums.get("removed", {}), "uncertified_queries": sums.get("uncertified", 0),
        "candidates_per_query": sums.get("depth", 0), "negative_km": distribution(tally.values("negative_km")), "dropped_places": dropped,
    }


def mixed_figures(tally: Tally, dropped: dict, depth: int) -> dict:
    """Negatives per query and per source, km and score distributions (all and per source), removals per
    miner, and the similarity index's recall against exact search (``sums["recall"]``: hits and queries)."""
    sums = tally.sums
    geo, recall = sums.get("geo", {}), sums.get("recall", {})
    by_source = {name: {"negatives": int(sums.get("by_source", {}).get(name, 0)),
                        "negative_km": distribution(tally.values(f"{name}.negative_km")),
                        "negative_scores": distribution(tally.values(f"{name}.negative_scores"))} for name in SOURCES}
    return {
        **count_figures(tally), "geo_short_queries": geo.get("short", 0), "negative_km": distribution(tally.values("negative_km")),
        "negative_scores": distribution(tally.values("negative_scores")), "by_source": by_source,
        "removed": {"geographic": geo.get("removed", {}), "similarity": sums.get("similarity_removed", {})},
        "uncertified_queries": geo.get("uncertified", 0), "candidates_per_query": {"geographic": geo.get("depth", 0), "similarity": depth},
        "recall": {"k": depth, "queries": recall["queries"], "recall": round(recall["hits"] / recall["queries"], 4)}
        if recall.get("queries") else None,
        "dropped_places": dropped,
    }


def distribution(values: np.ndarray) -> dict:
    """Mean and 5/25/50/75/95th percentiles (``{}`` when empty)."""
    if len(values) == 0:
        return {}
    q = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": round(float(values.mean()), 4), **{f"p{p}": round(float(v), 4) for p, v in zip((5, 25, 50, 75, 95), q)}}
