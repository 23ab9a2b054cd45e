"""Similarity miner: hard negatives from a search backend's candidates, as sentence-transformers does.

Pure numpy, vectorised over queries: every filter is a boolean mask over the ``(q, k)``
candidate matrix, and the selection is a per-row "first ``num_negatives`` eligible"
(``top``) or a Gumbel-top-k draw (``random``, ``weighted``). No Python loop per query.

Semantics follow ``sentence_transformers.util.mine_hard_negatives`` (ST) where the meaning
is the same:

1. Identity filters (false negatives by construction): the query's own positives
   (``"positive"``, unless ``include_positives``), items of the query's group (``"group"``), items
   whose text equals a positive's or the query's, or a higher candidate's (one text under two ids
   is one candidate, as in ST's de-duplicated corpus) (``"duplicate_text"``, when ``exclude_duplicate_texts``).
2. Candidate pool: every candidate given. Pipelines fetch ``range_max + max_positives``
   neighbours per query (``MineConfig.window_end``: ST's default ``range_max`` when unset),
   ``max_positives`` taken over the whole query set, as ST does.
3. Score filters, in ST's order, each keeping a candidate when:
   ``absolute_margin``: ``score + margin <= positive_score`` (margin 0: no negative above the positive);
   ``relative_margin``: ``score <= positive_score - |positive_score| * margin``
   (= ``positive_score * (1 - margin)`` for positive scores; 0.05 is NV-Retriever's TopK-PercPos);
   ``max_score``: ``score <= max_score``; ``min_score``: ``score >= min_score``.
4. Rank window: the survivors keep their score order; those at survivor rank
   ``[range_min, range_max)`` are eligible (ST ranks after filtering: it takes ``topk``
   over the filtered scores and then drops the first ``range_min``). Others count as ``"range"``.
5. Sampling: ``top`` takes the first ``num_negatives`` eligible; ``random`` draws uniformly
   without replacement; ``weighted`` draws without replacement with probability
   ``softmax(score / weighted_temperature)``. Chosen negatives are returned by descending score.

Each removed candidate is counted once, under the first filter that removes it, in the
order above. Padding candidates (row ``-1``) are never counted.

Example::

    from hardneg.config import MineConfig
    rows = np.array([[7, 3, 5, 9]]); scores = np.array([[0.9, 0.8, 0.7, 0.1]], np.float32)
    result = mine_similarity(rows, scores, [np.array([7])], np.array([0.9], np.float32),
                             MineConfig(num_negatives=2))
    result.negative_rows  # [[3, 5]]
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from hardneg.config import MineConfig
from hardneg.errors import InputError

logger = logging.getLogger(__name__)

FILTERS = (
    "positive", "group", "duplicate_text", "absolute_margin", "relative_margin", "max_score", "min_score", "range",
)


@dataclass(frozen=True)
class Ragged:
    """Per-query lists stored flat, as Arrow's ListArray does: query ``i`` owns ``values[offsets[i]:offsets[i+1]]``.

    Example::

        Ragged(np.array([0, 2, 3]), np.array([4, 8, 1]))   # query 0 -> [4, 8], query 1 -> [1]
    """

    offsets: np.ndarray
    values: np.ndarray


RaggedLike = Union[Ragged, Sequence[Sequence[int]], np.ndarray]


@dataclass
class MiningResult:
    """What ``mine_similarity`` returns, one row per query.

    Attributes:
        negative_rows: ``(q, num_negatives)`` int64 corpus rows by descending score, ``-1`` padded.
        negative_scores: ``(q, num_negatives)`` float32 scores, ``nan`` padded.
        counts: ``(q,)`` negatives found per query.
        removed: candidates each filter removed (keys: ``FILTERS``).
        short_queries: queries with fewer than ``num_negatives`` negatives.
    """

    negative_rows: np.ndarray
    negative_scores: np.ndarray
    counts: np.ndarray
    removed: dict = field(default_factory=dict)
    short_queries: int = 0

    def full_mask(self) -> np.ndarray:
        """``(q,)`` True where the query got all ``num_negatives`` negatives (what ``on_short="drop"`` keeps)."""
        return self.counts == self.negative_rows.shape[1]


def hash_texts(texts: Sequence[str | bytes]) -> np.ndarray:
    """Stable 64-bit hashes of texts (blake2b, 8 bytes read big-endian: a pairs input's ``text_id`` is ``t`` and
    their 16 hex digits), for ``corpus_text_hash``, ``query_forbidden_hashes``, repeats and the held-out rank.

    Example::

        hash_texts(["a", "b", "a"])  # uint64 array; equal texts, equal hashes
    """
    out = np.empty(len(texts), dtype=np.uint64)
    for i, text in enumerate(texts):
        # 0 is the padding of query_forbidden_hashes, so no text hashes to it.
        data = text if isinstance(text, bytes) else text.encode("utf-8")  # an image given as bytes hashes as is
        out[i] = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") or 1
    return out


def pad_ragged(ragged: Optional[RaggedLike], num_queries: int, fill, dtype, name: str) -> np.ndarray:
    """A ``(q, width)`` matrix from per-query lists, padded with ``fill`` (width >= 1)."""
    if ragged is None:
        return np.full((num_queries, 1), fill, dtype=dtype)
    if isinstance(ragged, np.ndarray) and ragged.ndim == 2:
        values = ragged.astype(dtype, copy=False)
        if len(values) != num_queries:
            raise InputError(f"{name}: {len(values)} rows for {num_queries} queries")
        return values if values.shape[1] else np.full((num_queries, 1), fill, dtype=dtype)
    if isinstance(ragged, Ragged):
        offsets = np.asarray(ragged.offsets, dtype=np.int64)
        flat = np.asarray(ragged.values).astype(dtype, copy=False)
    else:
        lists = [np.atleast_1d(np.asarray(item)).astype(dtype, copy=False) for item in ragged]
        offsets = np.concatenate([[0], np.cumsum([len(item) for item in lists])]).astype(np.int64)
        flat = np.concatenate(lists) if lists else np.empty(0, dtype=dtype)
    if len(offsets) != num_queries + 1:
        raise InputError(f"{name}: lists for {len(offsets) - 1} queries, expected {num_queries}")
    lengths = np.diff(offsets)
    out = np.full((num_queries, max(1, int(lengths.max(initial=0)))), fill, dtype=dtype)
    owner = np.repeat(np.arange(num_queries), lengths)
    position = np.arange(len(flat)) - np.repeat(offsets[:-1], lengths)
    out[owner, position] = flat[offsets[0]: offsets[-1]] if len(flat) else flat
    return out


def _check_candidates(rows: np.ndarray, scores: np.ndarray) -> None:
    if rows.ndim != 2 or rows.shape != scores.shape:
        raise InputError(f"candidate_rows {rows.shape} and candidate_scores {scores.shape} must be equal (q, k) shapes")
    valid = rows >= 0
    bad = np.isnan(scores) & valid
    if bad.any():
        query, col = np.argwhere(bad)[0]
        raise InputError(f"candidate_scores: NaN score at query {query}, candidate {col} (corpus row {rows[query, col]})")
    ordered = np.where(valid, scores, -np.inf)
    unsorted = ordered[:, 1:] > ordered[:, :-1]
    if unsorted.any():
        query = int(np.argwhere(unsorted)[0][0])
        raise InputError(
            f"candidates of query {query} are not sorted by descending score with -1 rows last; "
            "sort them first (sort_candidates)"
        )


def sort_candidates(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each query's candidates by descending score, ``-1`` rows last (after rescoring).

    Example::

        sort_candidates(np.array([[4, 2]]), np.array([[0.1, 0.7]]))  # ([[2, 4]], [[0.7, 0.1]])
    """
    valid = rows >= 0
    key = np.where(valid, np.nan_to_num(scores, nan=-np.inf), -np.inf)
    order = np.lexsort((~valid, -key), axis=1)  # by descending score, then real rows before -1
    return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1).astype(np.float32)


def _repeated(hashes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(q, k) True where a valid candidate's text hash already occurs at an earlier (higher) valid column of its row."""
    keyed = np.where(valid, hashes, np.uint64(0))
    order = np.argsort(keyed, axis=1, kind="stable")  # stable: among equal texts the highest-ranked comes first
    ordered = np.take_along_axis(keyed, order, 1)
    later = np.zeros_like(valid)
    later[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    out = np.zeros_like(valid)
    np.put_along_axis(out, order, later, axis=1)
    return out & valid


def _identity_masks(rows, valid, positives, corpus_groups, query_groups, corpus_text_hash, forbidden, exclude_dup, include_positives):
    """Boolean (q, k) masks of the identity filters, in FILTERS order."""
    safe = np.where(valid, rows, 0)
    masks = {"positive": np.zeros_like(valid) if include_positives else (rows[:, :, None] == positives[:, None, :]).any(axis=2) & valid}
    masks["group"] = np.zeros_like(valid)
    if corpus_groups is not None and query_groups is not None:
        query_groups = np.asarray(query_groups)
        masks["group"] = valid & (query_groups[:, None] >= 0) & (np.asarray(corpus_groups)[safe] == query_groups[:, None])
    masks["duplicate_text"] = np.zeros_like(valid)
    if exclude_dup and corpus_text_hash is not None:
        hashes = np.asarray(corpus_text_hash, dtype=np.uint64)[safe]
        masks["duplicate_text"] = _repeated(hashes, valid)  # one text under two ids is one negative, as ST's de-duplicated corpus
        if forbidden is not None and not include_positives:
            masks["duplicate_text"] |= valid & (hashes[:, :, None] == forbidden[:, None, :]).any(axis=2)
    return masks


def _score_masks(scores, valid, positive_scores, params: MineConfig):
    """Boolean (q, k) masks of the score filters (True = remove), with ST's comparisons."""
    positive = np.asarray(positive_scores, dtype=np.float32)[:, None]
    masks = {}
    if params.absolute_margin is not None:
        masks["absolute_margin"] = scores + np.float32(params.absolute_margin) > positive
    if params.relative_margin is not None:
        threshold = positive - np.abs(positive) * np.float32(params.relative_margin)
        masks["relative_margin"] = scores > threshold
    if params.max_score is not None:
        masks["max_score"] = scores > np.float32(params.max_score)
    if params.min_score is not None:
        masks["min_score"] = scores < np.float32(params.min_score)
    return {name: mask & valid for name, mask in masks.items()}


def _choose(eligible, scores, params: MineConfig, rng: np.random.Generator) -> np.ndarray:
    """(q, k) mask of the chosen candidates: at most num_negatives per row, only eligible ones."""
    n = params.num_negatives
    if params.sampling_strategy == "top":
        return eligible & (np.cumsum(eligible, axis=1) <= n)
    # Gumbel-top-k: the n largest of (log-weight + Gumbel noise) is a draw without replacement.
    keys = rng.gumbel(size=eligible.shape)
    if params.sampling_strategy == "weighted":
        keys = keys + scores.astype(np.float64) / params.weighted_temperature
    keys = np.where(eligible, keys, -np.inf)
    width = min(n, keys.shape[1])
    top = np.argpartition(-keys, width - 1, axis=1)[:, :width]
    chosen = np.zeros_like(eligible)
    np.put_along_axis(chosen, top, np.take_along_axis(eligible, top, 1), axis=1)
    return chosen


def mine_similarity(
    candidate_rows: np.ndarray,
    candidate_scores: np.ndarray,
    positive_rows: RaggedLike,
    positive_scores: np.ndarray,
    params: MineConfig,
    corpus_groups: Optional[np.ndarray] = None,
    query_groups: Optional[np.ndarray] = None,
    corpus_text_hash: Optional[np.ndarray] = None,
    query_forbidden_hashes: Optional[RaggedLike] = None,
    seed: Optional[int] = None,
) -> MiningResult:
    """Pick each query's hard negatives among its search candidates (see the module docstring for the rules).

    Args:
        candidate_rows: ``(q, k)`` int64 corpus rows by descending score; ``-1`` = none (last).
        candidate_scores: ``(q, k)`` float32 scores matching ``candidate_rows``.
        positive_rows: per query, the corpus rows of its positives (list of arrays, ``Ragged``,
            or a ``(q, p)`` matrix padded with ``-1``).
        positive_scores: ``(q,)`` score of the query's hardest positive (ST takes the lowest score
            among a query's positives) used by the margins; ``nan`` disables the margins for that query.
        params: ``MineConfig`` (num_negatives, range_min, range_max, max_score, min_score,
            absolute_margin, relative_margin, sampling_strategy, weighted_temperature,
            exclude_duplicate_texts, seed).
        corpus_groups: ``(n,)`` int group code of each corpus row, ``-1`` = no group.
        query_groups: ``(q,)`` the query's group code (its positive's group), ``-1`` = none.
        corpus_text_hash: ``(n,)`` uint64 ``hash_texts`` of each corpus text.
        query_forbidden_hashes: per query, hashes of its positives' texts and its own text
            (a padded matrix pads with 0, which ``hash_texts`` never returns).
        seed: seed of ``random``/``weighted`` sampling; ``params.seed`` when None. The draw
            depends on the batch of queries, so pipelines should derive it from the batch index.

    Example::

        rows = np.array([[1, 2, 3, 4]]); scores = np.array([[0.9, 0.8, 0.6, 0.5]], np.float32)
        mine_similarity(rows, scores, [[1]], np.array([0.9]), MineConfig(num_negatives=2,
                        relative_margin=0.15)).negative_rows   # [[3, 4]]: 0.8 > 0.9 * 0.85
    """
    rows = np.asarray(candidate_rows, dtype=np.int64)
    scores = np.asarray(candidate_scores, dtype=np.float32)
    _check_candidates(rows, scores)
    num_queries = len(rows)
    if len(positive_scores) != num_queries:
        raise InputError(f"positive_scores: {len(positive_scores)} values for {num_queries} queries")
    valid = rows >= 0
    positives = pad_ragged(positive_rows, num_queries, -1, np.int64, "positive_rows")
    forbidden = None
    if query_forbidden_hashes is not None:
        forbidden = pad_ragged(query_forbidden_hashes, num_queries, 0, np.uint64, "query_forbidden_hashes")

    removed = dict.fromkeys(FILTERS, 0)
    alive = valid.copy()
    for name, mask in _identity_masks(rows, valid, positives, corpus_groups, query_groups, corpus_text_hash,
                                      forbidden, params.exclude_duplicate_texts, params.include_positives).items():
        removed[name] += int((mask & alive).sum())
        alive &= ~mask
    for name, mask in _score_masks(scores, valid, positive_scores, params).items():
        removed[name] += int((mask & alive).sum())
        alive &= ~mask
    survivor_rank = np.cumsum(alive, axis=1) - 1
    in_window = survivor_rank >= params.range_min
    if params.range_max is not None:
        in_window &= survivor_rank < params.range_max
    removed["range"] += int((alive & ~in_window).sum())
    eligible = alive & in_window

    rng = np.random.default_rng(params.seed if seed is None else seed)
    chosen = _choose(eligible, scores, params, rng)
    return _gather(rows, scores, chosen, params.num_negatives, removed)


def _gather(rows, scores, chosen, num_negatives, removed) -> MiningResult:
    """Chosen candidates first, in column (= descending score) order; padded to num_negatives."""
    order = np.argsort(~chosen, axis=1, kind="stable")[:, :num_negatives]
    counts = chosen.sum(axis=1).astype(np.int64)
    width = order.shape[1]
    present = np.arange(width)[None, :] < counts[:, None]
    negative_rows = np.full((len(rows), num_negatives), -1, dtype=np.int64)
    negative_scores = np.full((len(rows), num_negatives), np.nan, dtype=np.float32)
    negative_rows[:, :width] = np.where(present, np.take_along_axis(rows, order, 1), -1)
    negative_scores[:, :width] = np.where(present, np.take_along_axis(scores, order, 1), np.nan)
    short = int((counts < num_negatives).sum())
    if short:
        logger.debug("%d of %d queries got fewer than %d negatives", short, len(rows), num_negatives)
    return MiningResult(negative_rows, negative_scores, counts, removed, short)
