"""Batch composer: pack every item into batches where its mined neighbours are (Sample4Geo's sampling).

With in-batch negatives, a hard negative helps only when it shares its anchor's batch. The
composer walks the items in a seeded order; each batch starts from the next free item (the
seed), pulls in its neighbours and their neighbours (two hops, nearest first), then takes the
next free seed, until it holds ``batch_size`` items. Rules:

- an item is in exactly one batch per epoch (the last batches may be smaller);
- no two items of one group (``groups``, ``-1``: none) share a batch;
- no two items closer than ``min_km`` (``lat``/``lon`` in degrees) share a batch: the same place;
- the plan is a function of ``(seed, epoch)``: the same pair gives the same batches, another
  epoch another walk.

A neighbour already placed in an earlier batch cannot join; ``together_share`` says how many
``(anchor, neighbour)`` pairs ended up together.

Sample4Geo's sampler is ``hops=1`` with ``near_neighbours`` and ``random_neighbours`` over a
neighbour pool (``neighbours`` holds each anchor's pool, nearest first, e.g. 128 wide): a batch
takes its anchor, the anchor's ``near_neighbours`` nearest, then ``random_neighbours`` drawn from
the rest of the pool (ranks 33..128 for 32 and 32), so batches are hard but not always the same.

Example::

    neighbours = np.array([[1], [0], [3], [2]])
    plan = compose_batches(neighbours, batch_size=2, seed=0)
    plan.together_share   # 1.0: {0, 1} and {2, 3}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from hardneg.miners.geo import EARTH_RADIUS_KM, haversine_km, unit_vectors

LOOKAHEAD = 1024  # free items a batch may pass over (wrong group or place) before it is closed short


@dataclass
class BatchPlan:
    """Where every item goes in one epoch.

    Attributes:
        batch_ids: ``(n,)`` int64 batch of each item (batches numbered from 0 in packing order).
        order: ``(n,)`` int64 items by batch, then packing order: write rows in this order.
        together_share: share of ``(anchor, neighbour)`` pairs in one batch.
        num_batches: how many batches.
    """

    batch_ids: np.ndarray
    order: np.ndarray
    together_share: float
    num_batches: int


def together_share(neighbours: np.ndarray, batch_ids: np.ndarray, block: int = 65_536) -> float:
    """Share of ``(anchor, neighbour)`` pairs (``-1`` padding ignored) whose two items share a batch; ``block``
    anchors at a time (a whole 128-wide pool at once took ~5 KB a place, most of the peak at 1M places)."""
    together = pairs = 0
    for lo in range(0, len(neighbours), block):
        part = neighbours[lo:lo + block]
        valid = part >= 0
        together += int(((batch_ids[np.maximum(part, 0)] == batch_ids[lo:lo + len(part), None]) & valid).sum())
        pairs += int(valid.sum())
    return together / pairs if pairs else 1.0


def place_conflicts(lat: np.ndarray, lon: np.ndarray, min_km: float) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(offsets, rows)``: for each item, the other items closer than ``min_km`` (a k-d tree query)."""
    from scipy.spatial import cKDTree

    n = len(lat)
    if min_km <= 0 or n == 0:
        return np.zeros(n + 1, np.int64), np.zeros(0, np.int64)
    chord = 2 * np.sin(min(min_km / EARTH_RADIUS_KM, np.pi) / 2)
    pairs = cKDTree(unit_vectors(lat, lon)).query_pairs(chord * (1 + 1e-9), output_type="ndarray")
    pairs = pairs[haversine_km(lat[pairs[:, 0]], lon[pairs[:, 0]], lat[pairs[:, 1]], lon[pairs[:, 1]]) < min_km]
    both = np.concatenate([pairs, pairs[:, ::-1]]) if len(pairs) else np.zeros((0, 2), np.int64)
    both = both[np.argsort(both[:, 0], kind="stable")]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(both[:, 0], minlength=n))]).astype(np.int64)
    return offsets, both[:, 1].astype(np.int64)


def compose_batches(
    neighbours: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int = 0,
    groups: Optional[np.ndarray] = None,
    lat: Optional[np.ndarray] = None,
    lon: Optional[np.ndarray] = None,
    min_km: float = 0.0,
    hops: int = 2,
    near_neighbours: Optional[int] = None,
    random_neighbours: int = 0,
) -> BatchPlan:
    """Pack items ``0..n-1`` into batches of ``batch_size`` that keep each item's neighbours with it.

    Args:
        neighbours: ``(n, k)`` int64 rows of each item's mined negatives, ``-1`` padded.
        groups: ``(n,)`` int64 group codes; ``-1`` is no group.
        lat, lon, min_km: with ``min_km > 0``, items closer than it never share a batch.
        hops: how far from a seed the walk pulls neighbours (1: its own, 2: theirs too, ...).
        near_neighbours: take only each item's first ``near_neighbours`` neighbours, plus
            ``random_neighbours`` drawn (seeded by ``seed, epoch``) from the rest of its row; None
            takes the whole row in order.

    Example (Sample4Geo: pool 128, 32 nearest + 32 of ranks 33..128)::

        plan = compose_batches(pool, batch_size=128, seed=0, epoch=3, hops=1, near_neighbours=32, random_neighbours=32)
    """
    neighbours = np.asarray(neighbours, np.int64)
    n = len(neighbours)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if near_neighbours is not None and (near_neighbours < 0 or random_neighbours < 0):
        raise ValueError(f"near_neighbours and random_neighbours must be >= 0, got {near_neighbours} and {random_neighbours}")
    if lat is None or lon is None:
        lat, lon, min_km = np.zeros(n), np.zeros(n), 0.0
    conflict_offsets, conflicts = place_conflicts(np.asarray(lat, np.float64), np.asarray(lon, np.float64), min_km)
    rng = np.random.default_rng([seed, epoch])
    walk = rng.permutation(n).tolist()
    chosen = neighbours if near_neighbours is None else pick_neighbours(neighbours, near_neighbours, random_neighbours, rng)
    packer = _Packer(chosen, batch_size, groups, conflict_offsets, conflicts, hops)
    packer.pack(walk)
    batch_ids = np.array(packer.batch_of, np.int64)
    return BatchPlan(batch_ids, np.array(packer.order, np.int64), together_share(neighbours, batch_ids), packer.batches)


def pick_neighbours(pool: np.ndarray, near_neighbours: int, random_neighbours: int, rng: np.random.Generator) -> np.ndarray:
    """Per row of ``pool`` (nearest first, ``-1`` padded): its first ``near_neighbours`` entries, then
    ``random_neighbours`` drawn without replacement from its other entries (``-1`` padded)."""
    pool = np.asarray(pool, np.int64)
    near = pool[:, :near_neighbours]
    rest = pool[:, near_neighbours:]
    if random_neighbours == 0 or rest.shape[1] == 0:
        return near
    # A random key per entry, padding last: the first random_neighbours keys are a uniform draw of the valid ones.
    keys = np.where(rest >= 0, rng.random(rest.shape), np.inf)
    drawn = np.take_along_axis(rest, np.argsort(keys, axis=1)[:, :random_neighbours], axis=1)
    return np.concatenate([near, drawn], axis=1)


class _Packer:
    """The greedy walk; Python lists, because the walk is sequential by nature."""

    def __init__(self, neighbours, batch_size, groups, conflict_offsets, conflicts, hops):
        self.neighbours, self.batch_size, self.hops = neighbours, batch_size, hops
        self.groups = None if groups is None else np.asarray(groups, np.int64).tolist()
        self.conflict_offsets, self.conflicts = conflict_offsets, conflicts
        self.has_conflicts = (np.diff(conflict_offsets) > 0).tolist()
        self.batch_of = [-1] * len(neighbours)
        self.order: list[int] = []
        self.batches = 0

    def pack(self, walk: list[int]) -> None:
        cursor = 0
        while True:
            while cursor < len(walk) and self.batch_of[walk[cursor]] >= 0:
                cursor += 1
            if cursor == len(walk):
                return
            self._fill(walk, cursor)
            self.batches += 1

    def _fill(self, walk: list[int], cursor: int) -> None:
        self.size, self.group_set, self.blocked = 0, set(), set()
        passed = 0
        while self.size < self.batch_size and cursor < len(walk) and passed <= LOOKAHEAD:
            seed = walk[cursor]
            cursor += 1
            if self.batch_of[seed] >= 0:
                continue
            if not self._add(seed):
                passed += 1
                continue
            frontier = [seed]
            for _hop in range(self.hops):
                reached = []
                for item in frontier:
                    for other in self.neighbours[item].tolist():
                        if self.size >= self.batch_size:
                            return
                        if other >= 0 and self._add(other):
                            reached.append(other)
                frontier = reached

    def _add(self, item: int) -> bool:
        if self.batch_of[item] >= 0 or item in self.blocked:
            return False
        group = self.groups[item] if self.groups is not None else -1
        if group >= 0:
            if group in self.group_set:
                return False
            self.group_set.add(group)
        if self.has_conflicts[item]:
            self.blocked.update(self.conflicts[self.conflict_offsets[item]:self.conflict_offsets[item + 1]].tolist())
        self.batch_of[item] = self.batches
        self.order.append(item)
        self.size += 1
        return True
