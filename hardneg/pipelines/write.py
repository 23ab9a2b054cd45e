"""The write stage: the mined table in parts, its ST view, and batch mode, each folder committed once.

``on_short`` is decided here, once for every miner (``kept_rows``). Batch mode (``mine.batches``)
adds ``batch_id``, sorts rows by it and writes each Parquet row group as whole batches, so a Ray
Train worker reads a batch whole (``compose_batches``, epoch = round).

Example::

    parts = write_parts(table, storage.prepare_output(here.join("mined")))
"""

from __future__ import annotations

import posixpath
from typing import Optional

import numpy as np
import pyarrow as pa

from hardneg import storage
from hardneg.config import RunConfig
from hardneg.miners import compose_batches
from hardneg.pipelines.views import view_table
from hardneg.places import place_values
from hardneg.ray_runtime import run_jobs
from hardneg.search import embedding_files

PART_ROWS = 100_000
ROW_GROUP_ROWS = 8192  # whole batches are gathered into row groups of about this many rows


def write_parts(table: pa.Table, out: storage.Location, rows_per_part: int = PART_ROWS) -> int:
    """Write ``table`` as ``part-NNNNN.parquet`` files; returns the number of parts."""
    parts = max(1, -(-table.num_rows // rows_per_part))
    for part in range(parts):
        storage.write_parquet(table.slice(part * rows_per_part, rows_per_part), out.join(f"part-{part:05d}.parquet"))
    return parts


def kept_rows(cfg: RunConfig, counts: np.ndarray) -> np.ndarray:
    """Rows to write: all of them, or (``mine.on_short=drop``) those with ``num_negatives`` negatives."""
    return np.ones(len(counts), bool) if cfg.mine.on_short == "keep" else counts == cfg.mine.num_negatives


def write_view(cfg: RunConfig, mined_dir: storage.Location, out: storage.Location) -> str:
    """Write and commit the ``mine.format`` view of the committed mined table (once), one mined file at a
    time: a query's rows share a file, and the view of a file is written under its name (so in its order)."""
    if not storage.is_committed(out):
        anchor, positive = view_columns(cfg)
        storage.prepare_output(out)
        rows = 0
        for loc in storage.list_table_files(mined_dir.url):
            view = view_table(storage.read_table_file(loc), cfg.mine.format, cfg.mine.num_negatives, anchor, positive,
                              cfg.mine.view_scores())
            storage.write_parquet(view, out.join(posixpath.basename(loc.path)))
            rows += view.num_rows
        storage.commit(out, {"kind": "view", "format": cfg.mine.format, "scores": cfg.mine.view_scores(), "rows": rows})
    return out.url


def view_columns(cfg: RunConfig) -> tuple[str, str]:
    """The view's anchor and positive column names: the pairs input's own (``queries.anchor_column``,
    ``queries.positive_column``), as sentence-transformers keeps them; ``anchor``, ``positive`` for queries input."""
    if cfg.queries.format == "pairs":
        return cfg.queries.anchor_column, cfg.queries.positive_column
    return "anchor", "positive"


def places_table(places: pa.Table, negative_rows: np.ndarray, round_index: int, encoder: str,
                 negatives: Optional[tuple[pa.Array, pa.Array]] = None, **lists: np.ndarray) -> pa.Table:
    """One row per place: ``query_id``, ``query`` (its text, or its image), ``negative_ids``, ``negatives``, then ``lists`` (each a
    ``(q, n)`` array aligned with ``negative_rows``; floats are written as float32), ``round``, ``encoder``.

    A cross-view corpus (a ``view`` column) adds ``positive_id`` and ``positive`` (the place's own
    view), and the negatives are the other places' views: rows a trainer reads as it reads pairs.
    ``negatives``: the ``(ids, values)`` of ``negative_rows[negative_rows >= 0]`` when they are not rows of
    ``places`` (the shards of the mine stage look them up); else taken from ``places``."""
    present = negative_rows >= 0
    offsets = pa.array(np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int32))
    ids, texts = places.column("id").combine_chunks(), place_values(places).combine_chunks()
    columns = {"query_id": ids, "query": texts}
    if "view" in places.column_names:
        texts = places.column("view").combine_chunks()
        columns.update(positive_id=ids, positive=texts)
    if negatives is None:
        take = pa.array(negative_rows[present])
        negatives = ids.take(take), texts.take(take)
    columns.update(negative_ids=pa.ListArray.from_arrays(offsets, negatives[0]),
                   negatives=pa.ListArray.from_arrays(offsets, negatives[1]))
    for name, values in lists.items():
        flat = values[present]
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(flat, pa.float32() if flat.dtype.kind == "f" else None))
    columns["round"] = pa.array(np.full(places.num_rows, round_index, np.int32))
    columns["encoder"] = pa.array([encoder] * places.num_rows, pa.string())
    return pa.table(columns)


def batch_stage(cfg: RunConfig, here: storage.Location, neighbours: np.ndarray, keep: np.ndarray,
                places: tuple[np.ndarray, np.ndarray, np.ndarray], round_index: int, figures: dict) -> str:
    """Compose batches around ``neighbours`` (each place's negatives), write ``batches/`` from the committed
    ``mined/`` (the rows of the places ``keep`` marks, in place order); adds the batch figures."""
    groups, lat, lon = places
    sampler = {} if cfg.mine.near_neighbours is None else {
        "hops": 1, "near_neighbours": cfg.mine.near_neighbours, "random_neighbours": cfg.mine.random_neighbours}
    plan = compose_batches(neighbours, cfg.mine.composed_batch_size, cfg.mine.seed, round_index, groups, lat, lon, cfg.mine.min_km,
                           **sampler)
    figures["together_share"] = round(plan.together_share, 4)
    figures["batches"] = plan.num_batches
    return write_batches(here.join("mined").url, plan, keep, here.join("batches"), cfg.mine.composed_batch_size)


def write_batches(mined_dir: str, plan, keep: np.ndarray, out: storage.Location, batch_size: int,
                  rows_per_part: int = PART_ROWS, row_group_rows: int = ROW_GROUP_ROWS) -> str:
    """The committed mined table's rows (the kept places', in place order) plus ``batch_id`` in plan order, row
    groups of whole batches (about ``row_group_rows`` rows), files of about ``rows_per_part`` rows; committed (once).

    The driver plans by row numbers only; each output file is written by its own task (a Ray task, or in this
    process for a round run in process) that reads the mined files holding its rows, one at a time, keeping
    only those: no process holds the whole table."""
    if storage.is_committed(out):
        return out.url
    order = plan.order[keep[plan.order]]
    ids = plan.batch_ids[order]
    positions = (np.cumsum(keep) - 1)[order]  # each output row's row in the mined table
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
    cuts = [0]
    for start in starts.tolist():
        if start - cuts[-1] >= row_group_rows:
            cuts.append(start)
    cuts.append(len(ids))
    files: list[list[int]] = [[0]]  # each file's row-group cuts
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if lo - files[-1][0] >= rows_per_part:
            files.append([lo])
        files[-1].append(hi)
    storage.prepare_output(out)
    mined = embedding_files(mined_dir)  # (url, rows), in row order
    jobs = [(mined, positions[part[0]:part[-1]], ids[part[0]:part[-1]], [cut - part[0] for cut in part],
             out.join(f"part-{number:05d}.parquet").url, storage.s3_options()) for number, part in enumerate(files)]
    run_jobs(write_batch_file, jobs, num_cpus=1)
    storage.commit(out, {"kind": "batches", "rows": len(ids), "parts": len(files), "batch_size": batch_size,
                         "batches": int(len(starts)), "together_share": round(plan.together_share, 4),
                         "row_groups": "whole batches, rows sorted by batch_id"})
    return out.url


def write_batch_file(mined: list[tuple[str, int]], positions: np.ndarray, batch_ids: np.ndarray, cuts: list[int], url: str,
                     storage_options: dict) -> None:
    """One file of ``batches/``: the mined table's rows at ``positions`` (in that order, read from the ``mined``
    files that hold them) plus ``batch_id``, one row group per ``cuts`` range."""
    storage.restore_options(storage_options)
    pieces, at, start = [], [], 0
    for file_url, rows in mined:
        inside = np.flatnonzero((positions >= start) & (positions < start + rows))
        if len(inside):
            pieces.append(storage.read_table_file(storage.resolve(file_url)).take(pa.array(positions[inside] - start)))
            at.append(inside)
        start += rows
    if not pieces:  # no rows: the first file's schema
        pieces, at = [storage.read_table_file(storage.resolve(mined[0][0])).slice(0, 0)], [np.zeros(0, np.int64)]
    table = pa.concat_tables(pieces).take(pa.array(np.argsort(np.concatenate(at), kind="stable")))
    table = table.append_column("batch_id", pa.array(batch_ids, pa.int64()))
    storage.write_parquet_row_groups([table.slice(lo, hi - lo) for lo, hi in zip(cuts[:-1], cuts[1:])], table.schema,
                                     storage.resolve(url))
