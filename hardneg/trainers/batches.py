"""Training batches from a Ray Train dataset shard: fixed-size batches, or whole pre-composed batches.

Batch mode (the mined round has ``batch_id``, rows sorted by it): the dataset is
not split by Ray; every worker streams it in order and keeps the batches with
``batch_id % world_size == rank``, so each batch reaches exactly one worker,
whole, and a query's hard negatives (other rows' positives) share its step.

Example::

    for frame in read_batches(ray.train.get_dataset_shard("train"), batch_size=32):
        queries, positives, negatives, mask = batch_texts(frame, negatives_per_row=1)
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import pandas as pd

from hardneg.errors import InputError

REQUIRED_COLUMNS = ("query", "positive", "negatives")
READ_ROWS = 1024


def check_columns(frame: pd.DataFrame, batch_mode: bool) -> None:
    """Raise ``InputError`` naming the columns a training batch lacks (grouping needs only ``batch_id``)."""
    needed = ("batch_id",) if batch_mode else REQUIRED_COLUMNS
    missing = [name for name in needed if name not in frame.columns]
    if missing:
        raise InputError(f"mined round: training data lacks column(s) {missing}; has {list(frame.columns)}")


def read_batches(
    shard,
    batch_size: int,
    batch_mode: bool = False,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: Optional[int] = None,
    seed: Optional[int] = None,
) -> Iterator[pd.DataFrame]:
    """Yield training batches as pandas frames from a ``DataIterator`` (or anything with ``iter_batches``).

    Without ``batch_mode``: batches of ``batch_size`` rows (the last partial one dropped), optionally
    locally shuffled. With it: one frame per ``batch_id`` owned by this rank, in stream order.
    """
    if not batch_mode:
        for frame in shard.iter_batches(
            batch_size=batch_size, batch_format="pandas", drop_last=True,
            local_shuffle_buffer_size=shuffle_buffer, local_shuffle_seed=seed if shuffle_buffer else None,
        ):
            check_columns(frame, batch_mode=False)
            yield frame
        return
    chunks = shard.iter_batches(batch_size=READ_ROWS, batch_format="pandas")
    yield from group_batches(chunks, rank, world_size)


def group_batches(chunks, rank: int = 0, world_size: int = 1) -> Iterator[pd.DataFrame]:
    """Whole batches of this rank from frames sorted by ``batch_id``; a batch seen twice is an error."""
    done: set[int] = set()
    pending: list[pd.DataFrame] = []
    current: Optional[int] = None
    for chunk in chunks:
        check_columns(chunk, batch_mode=True)
        chunk = chunk[chunk["batch_id"].to_numpy() % world_size == rank]
        for batch_id, rows in _runs(chunk):
            if batch_id == current:
                pending.append(rows)
                continue
            if current is not None:
                yield pd.concat(pending, ignore_index=True)
                done.add(current)
            if batch_id in done:
                raise InputError(f"mined round: rows of batch_id {batch_id} are not contiguous; write rows sorted by batch_id")
            current, pending = batch_id, [rows]
    if current is not None:
        yield pd.concat(pending, ignore_index=True)


def _runs(chunk: pd.DataFrame) -> Iterator[tuple[int, pd.DataFrame]]:
    """Maximal runs of equal ``batch_id`` in row order."""
    ids = chunk["batch_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], dtype=np.int64)
    ends = np.r_[starts[1:], len(ids)]
    for start, end in zip(starts, ends):
        yield int(ids[start]), chunk.iloc[start:end]


def batch_texts(frame: pd.DataFrame, negatives_per_row: int) -> tuple[list, list, list, np.ndarray]:
    """Queries, positives, ``negatives_per_row`` negatives per row (flat, row-major; "" pads short rows) and their mask.

    Texts come back as strings; images given as bytes stay bytes (paths are strings either way)."""
    check_columns(frame, batch_mode=False)
    queries = [_value(text) for text in frame["query"]]
    positives = [_value(text) for text in frame["positive"]]
    mask = np.zeros((len(frame), negatives_per_row), dtype=bool)
    negatives: list[str] = []
    for row, texts in enumerate(frame["negatives"]):
        texts = list(texts)[:negatives_per_row] if texts is not None else []
        mask[row, : len(texts)] = True
        negatives.extend(_value(text) for text in texts)
        negatives.extend([""] * (negatives_per_row - len(texts)))
    return queries, positives, negatives, mask


def _value(value) -> str | bytes:
    return value if isinstance(value, bytes) else str(value)
