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
With ``holdout`` (the training loop) a cross-view corpus's held-out places are left out before the
search and evaluated with the encoder the round's block trains from (``hardneg.pipelines.heldout``).

Example::

    cfg = load_config(overrides={"mine.miner": "geographic", "corpus.path": "cities.jsonl", "index.backend": "kdtree"})
    manifest = geo_round(cfg, storage.resolve("runs/geo/rounds/00000"))
    manifest.figures["negative_km"]["p50"]
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import pyarrow as pa

from hardneg import storage
from hardneg.config import RunConfig
from hardneg.miners import GeoResult, mine_geographic, unit_vectors
from hardneg.pipelines.figures import geo_figures
from hardneg.pipelines.heldout import evaluate_places_stage, heldout_record, holdout_places
from hardneg.pipelines.index import index_or_reuse
from hardneg.pipelines.inputs import group_codes
from hardneg.pipelines.write import kept_rows, places_table, write_parts, write_place_rows
from hardneg.places import load_places
from hardneg.rundir import RoundManifest, stage_timing
from hardneg.search import build_index, open_index

logger = logging.getLogger(__name__)


def geo_round(cfg: RunConfig, here: storage.Location, round_index: int = 0, encoder: str = "base",
              model_path: Optional[str] = None, holdout: bool = False) -> RoundManifest:
    """Mine (and batch) the places corpus into the round folder ``here``; returns the round's manifest (to commit).

    Args:
        model_path: the encoder the round's block trains from (``cfg.model.path`` when None); it mines
            nothing here, it is what the held-out places evaluate.
        holdout: leave ``train.eval_fraction`` of a cross-view corpus's places out and evaluate on them.
    """
    stages: dict[str, dict] = {}
    started = time.perf_counter()
    every_place = load_places(cfg.corpus)
    places, heldout = holdout_places(every_place, cfg.train) if holdout else (every_place, None)
    lat, lon, groups = place_arrays(places.table)
    stages["read_places"] = stage_timing(started, every_place.table.num_rows)
    result, mine_stages = mine_places(cfg, here, places.table, lat, lon, groups)
    stages.update(mine_stages)

    mined = geo_table(places.table, result, round_index, encoder)
    keep = kept_rows(cfg, result.counts)
    figures = geo_figures(result, int(keep.sum()), places)
    outputs = write_place_rows(cfg, here, mined, result.negative_rows, keep, (groups, lat, lon),
                               {"miner": "geographic", "round": round_index, "encoder": encoder, "figures": figures}, stages)
    evaluate_places_stage(cfg, here, heldout, figures, stages, model_path)
    return RoundManifest(
        miner="geographic", round=round_index, encoder=encoder, model=None,
        inputs={"corpus": cfg.corpus.path}, config=cfg.model_dump(mode="json"),
        counts={"corpus": every_place.table.num_rows, "queries": places.table.num_rows, "rows": int(keep.sum())},
        stages=stages, figures=figures, outputs=outputs, heldout=heldout_record(cfg.train, heldout),
    )


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


