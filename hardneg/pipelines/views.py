"""Flat views of a mined table that sentence-transformers' trainers load directly.

Formats and columns follow ``mine_hard_negatives``' ``output_format`` and ``output_scores``; the
anchor and positive columns keep the input's names (``anchor`` / ``positive`` by default):

- ``triplet``: ``anchor``, ``positive``, ``negative``, one row per (query, positive, negative);
  with scores, ``scores`` = ``[positive_score, negative_score]``.
- ``n-tuple``: ``anchor``, ``positive``, ``negative_1`` .. ``negative_N``, one row per (query, positive)
  that has all N negatives; with scores, ``scores`` = ``[positive_score, negative_1_score, ...]``.
- ``n-tuple-scores``: ``n-tuple`` with scores (ST's deprecated alias).
- ``labeled-pair``: ``anchor``, ``positive``, ``label``: per query, each positive (label 1), then each of
  the query's negatives once (label 0), however many positives the query has; with scores, ``score``
  replaces ``label``.
- ``labeled-list``: ``anchor``, ``positive`` = ``[positive, negative_1, ...]``, ``labels`` = ``[1, 0, ...]``,
  one row per (query, positive) with at least one negative; with scores, ``scores`` replaces ``labels``.

Example::

    view_table(mined, "triplet", num_negatives=3).column_names   # ['anchor', 'positive', 'negative']
    view_table(mined, "labeled-pair", 3, anchor="question", positive="answer", scores=True).column_names
    # ['question', 'answer', 'score']
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FORMATS = ("default", "triplet", "n-tuple", "n-tuple-scores", "labeled-pair", "labeled-list")


def view_table(mined: pa.Table, fmt: str, num_negatives: int, anchor: str = "anchor", positive: str = "positive",
               scores: bool = False) -> pa.Table:
    """The ``fmt`` view of a mined table (``default`` returns it unchanged); ``scores`` as ST's ``output_scores``."""
    if fmt == "default":
        return mined
    if fmt == "n-tuple-scores":
        fmt, scores = "n-tuple", True
    mined = mined.combine_chunks()
    if fmt == "triplet":
        return _triplets(mined, anchor, positive, scores)
    if fmt == "n-tuple":
        return _n_tuples(mined, num_negatives, anchor, positive, scores)
    if fmt == "labeled-pair":
        return _labeled_pairs(mined, anchor, positive, scores)
    if fmt == "labeled-list":
        return _labeled_lists(mined, anchor, positive, scores)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def _column(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _triplets(mined: pa.Table, anchor: str, positive: str, scores: bool) -> pa.Table:
    negatives = _column(mined, "negatives")
    parent = pc.list_parent_indices(negatives)
    columns = {anchor: mined.column("query").take(parent), positive: mined.column("positive").take(parent),
               "negative": negatives.flatten()}
    if scores:
        pairs = np.stack([_column(mined, "positive_score").take(parent).to_numpy(zero_copy_only=False),
                          _column(mined, "negative_scores").flatten().to_numpy(zero_copy_only=False)], axis=1)
        columns["scores"] = pa.FixedSizeListArray.from_arrays(pa.array(pairs.ravel(), pa.float32()), 2).cast(pa.list_(pa.float32()))
    return pa.table(columns)


def _n_tuples(mined: pa.Table, num_negatives: int, anchor: str, positive: str, scores: bool) -> pa.Table:
    full = mined.filter(pc.equal(pc.list_value_length(_column(mined, "negatives")), num_negatives))
    lists = full.column("negatives")
    columns = {anchor: full.column("query"), positive: full.column("positive")}
    columns.update({f"negative_{i + 1}": pc.list_element(lists, i) for i in range(num_negatives)})
    if scores:
        negative_scores = _column(full, "negative_scores").flatten().to_numpy(zero_copy_only=False).reshape(-1, num_negatives)
        table = np.concatenate([_column(full, "positive_score").to_numpy(zero_copy_only=False)[:, None], negative_scores], axis=1)
        columns["scores"] = _rows_as_lists(table)
    return pa.table(columns)


def _rows_as_lists(matrix: np.ndarray) -> pa.Array:
    offsets = pa.array((np.arange(len(matrix) + 1) * matrix.shape[1]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.ravel(), pa.float32()))


def _labeled_pairs(mined: pa.Table, anchor: str, positive: str, scores: bool) -> pa.Table:
    """Each positive row, then the negatives of each query's first row (a query's rows share its negatives)."""
    query_ids = _column(mined, "query_id").to_numpy(zero_copy_only=False)
    rows = np.arange(mined.num_rows)
    first = np.flatnonzero(np.r_[True, query_ids[1:] != query_ids[:-1]]) if len(rows) else rows
    block = np.cumsum(np.isin(rows, first)) - 1  # the query block each row belongs to
    negatives = _column(mined, "negatives").take(pa.array(first))
    parent = first[pc.list_parent_indices(negatives).to_numpy()]
    owner = np.concatenate([rows, parent])
    kind = np.concatenate([np.zeros(len(rows), np.int8), np.ones(len(parent), np.int8)])  # positives first
    order = np.lexsort((kind, block[owner]))
    texts = pa.concat_arrays([_column(mined, "positive").cast(pa.string()), negatives.flatten().cast(pa.string())])
    columns = {anchor: mined.column("query").take(pa.array(owner[order])), positive: texts.take(pa.array(order))}
    if scores:
        values = pa.concat_arrays([_column(mined, "positive_score"), _column(mined, "negative_scores").take(pa.array(first)).flatten()])
        columns["score"] = values.take(pa.array(order))
    else:
        columns["label"] = pa.array((1 - kind[order]).astype(np.int64))
    return pa.table(columns)


def _labeled_lists(mined: pa.Table, anchor: str, positive: str, scores: bool) -> pa.Table:
    lengths = pc.list_value_length(_column(mined, "negatives")).to_numpy(zero_copy_only=False)
    kept = mined.filter(pa.array(lengths > 0))
    counts = lengths[lengths > 0]
    starts = np.concatenate([[0], np.cumsum(counts + 1)]).astype(np.int64)
    offsets, heads = pa.array(starts.astype(np.int32)), starts[:-1]  # heads: where each row's positive goes

    def with_head(head: pa.Array, tails: pa.Array, dtype: pa.DataType) -> pa.Array:
        flat = np.empty(int(starts[-1]), dtype=object if pa.types.is_string(dtype) else np.float64)
        is_head = np.zeros(len(flat), bool)
        is_head[heads] = True
        flat[is_head] = head.to_numpy(zero_copy_only=False)
        flat[~is_head] = tails.flatten().to_numpy(zero_copy_only=False)
        return pa.ListArray.from_arrays(offsets, pa.array(flat, dtype))

    columns = {anchor: kept.column("query"),
               positive: with_head(_column(kept, "positive"), _column(kept, "negatives"), pa.string())}
    if scores:
        columns["scores"] = with_head(_column(kept, "positive_score"), _column(kept, "negative_scores"), pa.float32())
    else:
        labels = np.zeros(int(starts[-1]), np.int64)
        labels[heads] = 1
        columns["labels"] = pa.ListArray.from_arrays(offsets, pa.array(labels))
    return pa.table(columns)
