"""Geographic miner (Sample4Geo's GPS sampling): the nearest other places by great-circle distance.

Pure numpy over coordinates in degrees. Candidates come from a search backend over 3-D unit
vectors (``unit_vectors``): the inner product of unit vectors is the cosine of the central
angle, monotone in great-circle distance, so ``exact``, faiss, ``kdtree`` and the Ray-sharded
index all serve. Distances are then recomputed exactly (haversine, float64) and the rules
applied, in this order, each removed candidate counted once under the first rule:

1. the query itself is never a candidate (not counted);
2. ``same_place``: closer than ``min_km`` (the same place seen again);
3. ``group``: same ``group`` as the query (``-1`` is no group);
4. ``beyond_max_km``: farther than ``max_km``.

Sampling: ``top`` takes the ``num_negatives`` nearest survivors (ties by lower row);
``random`` draws ``num_negatives`` uniformly from the nearest ``pool`` survivors, where
``pool = max(range_max or 10 * num_negatives + 10, num_negatives)`` (the similarity miner's
candidate depth). Chosen negatives are returned nearest first.

Exactness: a query's answer is *certified* when no item outside its candidates can be nearer
than its last needed survivor (or, when it is short, nearer than ``max_km``), allowing for
the backend's score error (``index.score_error``; ``1e-6`` for float32 backends). Queries that
are not certified are searched again with twice the candidates, up to ``max_candidates``;
those still uncertified keep what was found (valid negatives, maybe not the nearest) and are
counted in ``GeoResult.uncertified``. Removal counts are over the candidates of each query's
last search.

Example::

    from hardneg.config import MineConfig
    lat = np.array([0.0, 0.0, 0.0, 0.0]); lon = np.array([0.0, 0.001, 1.0, 2.0])
    result = mine_geographic(lat, lon, MineConfig(miner="geographic", num_negatives=1, min_km=1))
    result.negative_rows[0]   # [2]: row 1 is 0.1 km away, the same place
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from hardneg.config import IndexConfig, MineConfig

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
FLOAT32_SCORE_ERROR = 1e-6  # |float32 inner product of 3-D unit vectors - exact cosine|, with margin
GEO_REMOVED = ("same_place", "group", "beyond_max_km")
CELLS_PER_SEARCH = 1 << 22  # queries x candidates evaluated at once


@dataclass
class GeoResult:
    """What ``mine_geographic`` returns, one row per query.

    Attributes:
        negative_rows: ``(q, num_negatives)`` int64 rows, nearest first, ``-1`` padded.
        negative_km: ``(q, num_negatives)`` float32 haversine km, ``nan`` padded.
        counts: ``(q,)`` negatives found per query.
        removed: candidates removed per rule (keys: ``GEO_REMOVED``).
        short_queries: queries with fewer than ``num_negatives`` negatives.
        uncertified: queries whose answer may miss nearer items (``max_candidates`` reached).
        depth: the most candidates searched for one query.
    """

    negative_rows: np.ndarray
    negative_km: np.ndarray
    counts: np.ndarray
    removed: dict = field(default_factory=dict)
    short_queries: int = 0
    uncertified: int = 0
    depth: int = 0


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """``(n, 3)`` float64 unit vectors of points given in degrees.

    Example::

        unit_vectors(np.array([90.0]), np.array([0.0]))   # [[0, 0, 1]] (to rounding)
    """
    phi, lam = np.radians(np.asarray(lat, np.float64)), np.radians(np.asarray(lon, np.float64))
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1)


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points in degrees (broadcasting, float64).

    Example::

        haversine_km(0.0, 0.0, 0.0, 180.0)   # ~20015.1 (half the equator)
    """
    phi1, phi2 = np.radians(lat1), np.radians(lat2)
    half = np.sin((phi2 - phi1) / 2) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(np.radians(np.subtract(lon2, lon1)) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(half, 0.0, 1.0)))


def km_to_cosine(km) -> np.ndarray:
    """The inner product of two unit vectors ``km`` apart (clamped at the antipode)."""
    return np.cos(np.minimum(np.asarray(km, np.float64) / EARTH_RADIUS_KM, np.pi))


def mine_geographic(
    lat: np.ndarray,
    lon: np.ndarray,
    cfg: MineConfig,
    index=None,
    query_rows: Optional[np.ndarray] = None,
    groups: Optional[np.ndarray] = None,
    seed: Optional[int] = None,
    max_candidates: int = 8192,
    query_batch_size: int = 4096,
) -> GeoResult:
    """Geographic negatives for each query row, from ``index`` (built over ``unit_vectors(lat, lon)``).

    Args:
        lat, lon: ``(n,)`` degrees of every corpus item (validated by the caller).
        cfg: ``num_negatives``, ``min_km``, ``max_km``, ``sampling_strategy`` (top|random), ``range_max``.
        index: anything with ``search(queries, k)`` and ``ntotal`` over the rows' unit vectors; an
            in-process exact float32 index when None.
        query_rows: the corpus rows to mine for (all rows when None).
        groups: ``(n,)`` int64 group codes, ``-1`` for none.
        seed: random sampling seed (``cfg.seed`` when None).
    """
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    if index is None:
        from hardneg.search import build_index

        index = build_index(unit_vectors(lat, lon), IndexConfig(backend="exact", device="cpu"))
    query_rows = np.arange(len(lat)) if query_rows is None else np.asarray(query_rows, np.int64)
    groups = np.full(len(lat), -1, np.int64) if groups is None else np.asarray(groups, np.int64)
    return geographic_negatives(query_rows, lat[query_rows], lon[query_rows], groups[query_rows],
                                lambda rows: (lat[rows], lon[rows], groups[rows]), index, cfg, seed, max_candidates, query_batch_size)


def geographic_negatives(query_rows: np.ndarray, query_lat: np.ndarray, query_lon: np.ndarray, query_groups: np.ndarray,
                         places: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]], index, cfg: MineConfig,
                         seed: Optional[int] = None, max_candidates: int = 8192, query_batch_size: int = 4096) -> GeoResult:
    """``mine_geographic`` for queries given by their own rows, degrees and group codes, with the candidates'
    ``places(rows) -> (lat, lon, group codes)`` looked up as they are found: what a worker that holds only
    its queries runs, the candidates' coordinates served by the shards that hold them.

    ``index.score_error`` (``FLOAT32_SCORE_ERROR`` when absent) bounds the error of the scores the index
    ranks by; the answers are certified against it.
    """
    if cfg.sampling_strategy not in ("top", "random"):
        raise ValueError(f"mine.sampling_strategy={cfg.sampling_strategy!r}: the geographic miner takes top or random")
    n = cfg.num_negatives
    pool = n if cfg.sampling_strategy == "top" else max(cfg.candidate_depth(), n)
    rng = np.random.default_rng(cfg.seed if seed is None else seed)
    search = _Search(places, index, cfg, pool, max_candidates)
    query_lat, query_lon = np.asarray(query_lat, np.float64), np.asarray(query_lon, np.float64)
    rows_out = np.full((len(query_rows), n), -1, np.int64)
    km_out = np.full((len(query_rows), n), np.nan, np.float32)  # rounded only here: certification uses float64
    for lo in range(0, len(query_rows), query_batch_size):
        part = slice(lo, lo + query_batch_size)
        chosen, chosen_km = search.run(np.asarray(query_rows[part], np.int64), query_lat[part], query_lon[part],
                                       np.asarray(query_groups[part], np.int64))
        if cfg.sampling_strategy == "random":
            chosen, chosen_km = _draw(chosen, chosen_km, n, rng)
        rows_out[lo:lo + len(chosen)], km_out[lo:lo + len(chosen)] = chosen[:, :n], chosen_km[:, :n]
    counts = (rows_out >= 0).sum(axis=1)
    return GeoResult(rows_out, km_out, counts, search.removed, int((counts < n).sum()), search.uncertified, search.depth)


class _Search:
    """Search with doubling depth until each query's answer is certified; keeps removal counts."""

    def __init__(self, places, index, cfg: MineConfig, pool: int, max_candidates: int):
        self.places, self.index = places, index
        self.min_km, self.max_km, self.pool = cfg.min_km, cfg.max_km, pool
        self.error = 2 * getattr(index, "score_error", FLOAT32_SCORE_ERROR)
        self.ntotal = index.ntotal
        self.max_candidates = max(max_candidates, 2 * pool + 1)
        self.removed = dict.fromkeys(GEO_REMOVED, 0)
        self.uncertified = self.depth = 0

    def run(self, query_rows: np.ndarray, lat: np.ndarray, lon: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chosen = np.full((len(query_rows), self.pool), -1, np.int64)
        chosen_km = np.full((len(query_rows), self.pool), np.nan, np.float64)
        pending = np.arange(len(query_rows))
        k = min(self.ntotal, 2 * self.pool + 1)
        while len(pending):
            last = k >= min(self.ntotal, self.max_candidates)
            still = []
            for lo in range(0, len(pending), max(1, CELLS_PER_SEARCH // k)):
                part = pending[lo:lo + max(1, CELLS_PER_SEARCH // k)]
                rows, km, certified, counts = self._evaluate(query_rows[part], lat[part], lon[part], groups[part], k)
                done = certified | last
                self.uncertified += int((done & ~certified).sum())
                chosen[part[done]], chosen_km[part[done]] = rows[done], km[done]
                for name, count in zip(GEO_REMOVED, counts[done].sum(axis=0)):
                    self.removed[name] += int(count)
                still.append(part[~done])
            self.depth = max(self.depth, k)
            pending = np.concatenate(still)
            k = min(2 * k, self.ntotal, self.max_candidates)
        return chosen, chosen_km

    def _evaluate(self, queries: np.ndarray, lat: np.ndarray, lon: np.ndarray, groups: np.ndarray, k: int):
        """Chosen rows/km (q, pool), whether each query is certified, and its removal counts (q, 3)."""
        _, rows = self.index.search(unit_vectors(lat, lon), k)
        valid = rows >= 0
        safe = np.where(valid, rows, np.max(rows, initial=0))  # a padded slot looks up some real row, then is masked
        found_lat, found_lon, found_groups = (a.reshape(rows.shape) for a in self.places(safe.ravel()))
        km = haversine_km(lat[:, None], lon[:, None], found_lat, found_lon)
        live = valid & (rows != queries[:, None])
        same_place = live & (km < self.min_km)
        query_groups = groups[:, None]
        group = live & ~same_place & (query_groups >= 0) & (found_groups == query_groups)
        beyond = live & ~same_place & ~group & (km > self.max_km)
        eligible = live & ~same_place & ~group & ~beyond
        order = np.lexsort((rows, np.where(eligible, km, np.inf)), axis=1)[:, :self.pool]
        taken = np.take_along_axis(eligible, order, 1)
        out_rows = np.where(taken, np.take_along_axis(rows, order, 1), -1)
        out_km = np.where(taken, np.take_along_axis(km, order, 1), np.nan)
        if out_rows.shape[1] < self.pool:
            pad = self.pool - out_rows.shape[1]
            out_rows = np.pad(out_rows, ((0, 0), (0, pad)), constant_values=-1)
            out_km = np.pad(out_km, ((0, 0), (0, pad)), constant_values=np.nan)
        done = self._certified(rows, km, eligible.sum(axis=1), out_km, k)
        counts = np.stack([same_place.sum(1), group.sum(1), beyond.sum(1)], axis=1)
        return out_rows, out_km, done, counts

    def _certified(self, rows, km, found, out_km, k) -> np.ndarray:
        """True where no unsearched item can be nearer than what the answer still needs."""
        if k >= self.ntotal:
            return np.ones(len(rows), bool)
        kth = np.where(rows[:, -1] >= 0, km[:, -1], np.inf)
        reach = km_to_cosine(kth) + self.error  # an unsearched item's cosine is below this
        needed = np.where(found >= self.pool, out_km[:, self.pool - 1], self.max_km)
        return km_to_cosine(needed) > reach


def _draw(chosen: np.ndarray, chosen_km: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uniform draws without replacement from each row's pool (Gumbel-top-k), nearest first."""
    keys = np.where(chosen >= 0, rng.random(chosen.shape), np.inf)
    picked = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :n], axis=1)
    rows, km = np.take_along_axis(chosen, picked, 1), np.take_along_axis(chosen_km, picked, 1)
    order = np.lexsort((rows, np.where(rows >= 0, km, np.inf)), axis=1)
    return np.take_along_axis(rows, order, 1), np.take_along_axis(km, order, 1)
