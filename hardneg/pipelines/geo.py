"""A geographic round: places corpus -> geographic miner -> mined/ (and batches/) -> round manifest.

No model and no embedding: the search runs over the 3-D unit vectors of the coordinates, in
process, or on ``index.num_shards`` Ray actors (the vectors are then written as an embeddings
folder, ``rounds/NNNNN/geo_vectors/``, and the index built from it persisted in ``geo_index/``). The exact backend runs in float32
on the CPU here: fp16 cannot tell places a few km apart. Unless ``index.backend`` is set, one
in-process shard uses the k-d tree (exact, and ~35x faster than the matmul on 34k places).

Output, one row per place (``rounds/NNNNN/mined/``): ``query_id``, ``query`` (text or null),
``negative_ids``, ``negatives`` (texts or nulls), ``negative_km``, ``round``, ``encoder``.
With ``mine.batches``, ``rounds/NNNNN/batches/`` holds the same rows plus ``batch_id``, sorted
by it, each Parquet row group made of whole batches (``compose_batches``, epoch = round).

Example::

    cfg = load_config(overrides={"mine.miner": "geographic", "corpus.path": "cities.jsonl", "index.backend": "kdtree"})
    manifest = geo_round(cfg, storage.resolve("runs/geo/rounds/00000"))
    manifest["figures"]["negative_km"]["p50"]
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from hardneg import storage
from hardneg.config import RunConfig
from hardneg.miners import GeoResult, compose_batches, mine_geographic, unit_vectors
from hardneg.pipelines.inputs import group_codes
from hardneg.pipelines.mine import PART_ROWS, distribution, stage_timing, write_parts
from hardneg.places import Places, load_places
from hardneg.pipelines.index import index_or_reuse
from hardneg.search import build_index, open_index

logger = logging.getLogger(__name__)

ROW_GROUP_ROWS = 8192  # whole batches are gathered into row groups of about this many rows


def geo_round(cfg: RunConfig, here: storage.Location, round_index: int = 0, encoder: str = "base") -> dict:
    """Mine (and batch) the places corpus into the round folder ``here``; commits it and returns its manifest."""
    stages: dict[str, dict] = {}
    started = time.perf_counter()
    places = load_places(cfg.corpus)
    lat, lon, groups = place_arrays(places.table)
    stages["read_places"] = stage_timing(started, places.table.num_rows)
    result, mine_stages = mine_places(cfg, here, places.table, lat, lon, groups)
    stages.update(mine_stages)

    started = time.perf_counter()
    mined = geo_table(places.table, result, round_index, encoder)
    keep = kept_rows(cfg, result.counts)
    figures = geo_figures(result, int(keep.sum()), places)
    outputs = {"mined": commit_mined(here.join("mined"), mined, keep, {"miner": "geographic", "round": round_index,
                                                                         "encoder": encoder, "figures": figures})}
    stages["write"] = stage_timing(started, int(keep.sum()))
    if cfg.mine.batches:
        started = time.perf_counter()
        outputs["batches"] = batch_stage(cfg, here, mined, result.negative_rows, keep, (groups, lat, lon), round_index, figures)
        stages["batches"] = stage_timing(started, places.table.num_rows)
    return commit_round(here, {
        "kind": "round", "miner": "geographic", "round": round_index, "encoder": encoder, "model": None,
        "inputs": {"corpus": cfg.corpus.path}, "config": cfg.model_dump(mode="json"),
        "counts": {"corpus": places.table.num_rows, "queries": places.table.num_rows, "rows": int(keep.sum())},
        "stages": stages, "figures": figures, "outputs": outputs,
    })


def place_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``lat``, ``lon`` (degrees) and int64 group codes (``-1``: none) of a ``Places.table``."""
    return table.column("lat").to_numpy(), table.column("lon").to_numpy(), group_codes(table.column("group"), table.num_rows)


def mine_places(cfg: RunConfig, here: storage.Location, table: pa.Table, lat: np.ndarray, lon: np.ndarray,
                groups: np.ndarray) -> tuple[GeoResult, dict]:
    """The geographic miner over every place (``cfg.mine``), and the ``index`` and ``mine`` stage timings."""
    started = time.perf_counter()
    update = {"device": "cpu"}
    if "backend" not in cfg.index.model_fields_set and cfg.index.num_shards == 1:
        update["backend"] = "kdtree"  # the exact default scans every place per query; a k-d tree is exact too
    with _index(cfg.index.model_copy(update=update), here, table, lat, lon) as index:
        stages = {"index": stage_timing(started, table.num_rows)}
        started = time.perf_counter()
        result = mine_geographic(lat, lon, cfg.mine, index=index, groups=groups, seed=cfg.mine.seed,
                                 query_batch_size=cfg.index.query_batch_size)
    stages["mine"] = stage_timing(started, table.num_rows)
    return result, stages


def kept_rows(cfg: RunConfig, counts: np.ndarray) -> np.ndarray:
    """Rows to write: all of them, or (``mine.on_short=drop``) those with ``num_negatives`` negatives."""
    return np.ones(len(counts), bool) if cfg.mine.on_short == "keep" else counts == cfg.mine.num_negatives


def commit_mined(mined_dir: storage.Location, mined: pa.Table, keep: np.ndarray, manifest: dict) -> str:
    """Write the kept rows of ``mined`` and commit ``mined_dir`` (once: a resumed round keeps what is committed)."""
    if not storage.is_committed(mined_dir):  # a resumed round re-mines (deterministic) and keeps what is committed
        storage.prepare_output(mined_dir)
        parts = write_parts(mined.filter(pa.array(keep)), mined_dir)
        storage.commit(mined_dir, {"kind": "mined", **manifest, "rows": int(keep.sum()), "parts": parts})
    return mined_dir.url


def batch_stage(cfg: RunConfig, here: storage.Location, mined: pa.Table, neighbours: np.ndarray, keep: np.ndarray,
                places: tuple[np.ndarray, np.ndarray, np.ndarray], round_index: int, figures: dict) -> str:
    """Compose batches around ``neighbours`` (each row's negatives), write ``batches/``; adds the batch figures."""
    groups, lat, lon = places
    plan = compose_batches(neighbours, cfg.mine.batch_size, cfg.mine.seed, round_index, groups, lat, lon, cfg.mine.min_km)
    figures["together_share"] = round(plan.together_share, 4)
    figures["batches"] = plan.num_batches
    return write_batches(mined, plan, keep, here.join("batches"), cfg.mine.batch_size)


def commit_round(here: storage.Location, manifest: dict) -> dict:
    """Add the total ``seconds`` (sum of the stages) and commit the round folder with ``manifest``."""
    manifest["seconds"] = round(sum(stage["seconds"] for stage in manifest["stages"].values()), 3)
    storage.commit(here, manifest)
    return manifest


def _index(index_cfg, here: storage.Location, table: pa.Table, lat: np.ndarray, lon: np.ndarray):
    """In-process over the float64 unit vectors, or Ray shards of the index persisted in ``geo_index/``,
    built from the vectors written as an embeddings folder (``geo_vectors/``)."""
    vectors = unit_vectors(lat, lon)
    if index_cfg.num_shards == 1:
        return build_index(vectors, index_cfg)
    out = here.join("geo_vectors")
    if not storage.is_committed(out):
        storage.prepare_output(out)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), 3)
        write_parts(pa.table({"id": table.column("id"), "embedding": embedding}), out)
        storage.commit(out, {"kind": "embeddings", "model": "geo-unit-vectors", "dim": 3, "rows": table.num_rows})
    index_or_reuse(index_cfg, out.url, here.join("geo_index"))
    return open_index(here.join("geo_index").url, index_cfg)


def geo_table(places: pa.Table, result: GeoResult, round_index: int, encoder: str) -> pa.Table:
    """One row per place: its id and text, its negatives' ids, texts and km (nearest first)."""
    return places_table(places, result.negative_rows, round_index, encoder, negative_km=result.negative_km)


def places_table(places: pa.Table, negative_rows: np.ndarray, round_index: int, encoder: str, **lists: np.ndarray) -> pa.Table:
    """One row per place: ``query_id``, ``query``, ``negative_ids``, ``negatives``, then ``lists`` (each a
    ``(q, n)`` array aligned with ``negative_rows``; floats are written as float32), ``round``, ``encoder``."""
    present = negative_rows >= 0
    offsets = pa.array(np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int32))
    take = pa.array(negative_rows[present])
    ids, texts = places.column("id").combine_chunks(), places.column("text").combine_chunks()
    columns = {
        "query_id": ids,
        "query": texts,
        "negative_ids": pa.ListArray.from_arrays(offsets, ids.take(take)),
        "negatives": pa.ListArray.from_arrays(offsets, texts.take(take)),
    }
    for name, values in lists.items():
        flat = values[present]
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(flat, pa.float32() if flat.dtype.kind == "f" else None))
    columns["round"] = pa.array(np.full(places.num_rows, round_index, np.int32))
    columns["encoder"] = pa.array([encoder] * places.num_rows, pa.string())
    return pa.table(columns)


def write_batches(mined: pa.Table, plan, keep: np.ndarray, out: storage.Location, batch_size: int) -> str:
    """``mined`` rows plus ``batch_id`` in plan order, row groups of whole batches; committed (once)."""
    if storage.is_committed(out):
        return out.url
    order = plan.order[keep[plan.order]]
    ids = plan.batch_ids[order]
    table = mined.take(pa.array(order)).append_column("batch_id", pa.array(ids, pa.int64()))
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
    cuts = [0]
    for start in starts.tolist():
        if start - cuts[-1] >= ROW_GROUP_ROWS:
            cuts.append(start)
    cuts.append(len(ids))
    files: list[list[pa.Table]] = [[]]
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if sum(piece.num_rows for piece in files[-1]) >= PART_ROWS:
            files.append([])
        files[-1].append(table.slice(lo, hi - lo))
    storage.prepare_output(out)
    for part, pieces in enumerate(files):
        storage.write_parquet_row_groups(pieces, table.schema, out.join(f"part-{part:05d}.parquet"))
    storage.commit(out, {"kind": "batches", "rows": len(ids), "parts": len(files), "batch_size": batch_size,
                         "batches": int(len(starts)), "together_share": round(plan.together_share, 4),
                         "row_groups": "whole batches, rows sorted by batch_id"})
    return out.url


def geo_figures(result: GeoResult, rows: int, places: Places) -> dict:
    """Negatives per query, short and uncertified queries, removals by rule, the km distribution."""
    counts = result.counts
    km = result.negative_km[~np.isnan(result.negative_km)]
    return {
        "queries": int(len(counts)), "rows": rows, "negatives": int(counts.sum()),
        "negatives_per_query": round(float(counts.mean()), 3) if len(counts) else 0.0,
        "short_queries": result.short_queries, "queries_without_negatives": int((counts == 0).sum()),
        "removed": result.removed, "uncertified_queries": result.uncertified, "candidates_per_query": result.depth,
        "negative_km": distribution(km), "dropped_places": places.dropped,
    }

