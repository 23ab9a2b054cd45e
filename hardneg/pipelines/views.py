"""Flat views of a mined table that sentence-transformers' trainers load directly.

Column names follow ``mine_hard_negatives``' ``output_format``:

- ``triplet``: ``anchor``, ``positive``, ``negative``, one row per negative;
- ``n-tuple``: ``anchor``, ``positive``, ``negative_1`` .. ``negative_N``, rows with all N negatives;
- ``labeled-pair``: ``anchor``, ``positive``, ``label``: the positive (label 1) then each negative (label 0).

Example::

    view_table(mined, "triplet", num_negatives=3).column_names   # ['anchor', 'positive', 'negative']
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def view_table(mined: pa.Table, fmt: str, num_negatives: int) -> pa.Table:
    """The ``fmt`` view of a mined table (``default`` returns it unchanged)."""
    if fmt == "default":
        return mined
    negatives = mined.column("negatives").combine_chunks()
    parent = pc.list_parent_indices(negatives)
    anchors, positives = mined.column("query"), mined.column("positive")
    if fmt == "triplet":
        return pa.table({"anchor": anchors.take(parent), "positive": positives.take(parent), "negative": negatives.values})
    if fmt == "n-tuple":
        full = mined.filter(pc.equal(pc.list_value_length(negatives), num_negatives))
        lists = full.column("negatives")
        columns = {"anchor": full.column("query"), "positive": full.column("positive")}
        columns.update({f"negative_{i + 1}": pc.list_element(lists, i) for i in range(num_negatives)})
        return pa.table(columns)
    if fmt == "labeled-pair":
        rows = np.arange(mined.num_rows)
        owner = np.concatenate([rows, parent.to_numpy()])
        order = np.argsort(owner, kind="stable")
        texts = pa.concat_arrays([positives.combine_chunks(), negatives.values]).take(pa.array(order))
        labels = np.concatenate([np.ones(len(rows), np.int64), np.zeros(len(negatives.values), np.int64)])[order]
        return pa.table({"anchor": anchors.take(pa.array(owner[order])), "positive": texts, "label": labels})
    raise ValueError(f"unknown format {fmt!r}")
