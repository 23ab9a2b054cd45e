"""A geographic round: places corpus -> places/ -> the mine stage's geographic miner -> mined/ (and batches/) -> manifest.

No model and no embedding. The places are written once (``rounds/NNNNN/places/``, files of
``index.query_batch_size`` rows) and mined by the mine stage (``hardneg.pipelines.mine.run_tasks``) with
the geographic strategy (``hardneg.pipelines.place_shards``): ``index.num_shards`` ``PlaceShard``s hold the
places' 3-D unit vectors in an index (in process, or as Ray actors), and each task mines one file's
places and writes their rows. The exact backend runs in float32 on the CPU here: fp16 cannot tell
places a few km apart. Unless ``index.backend`` is set, the shards use a k-d tree (exact, and ~35x
faster than the matmul on 34k places). The driver keeps the negatives' rows and km of every place
(8 + 4 bytes per negative), which the batch stage and the figures need whole.

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

import io
import json
import logging
import time
from typing import Optional

import numpy as np
import pyarrow as pa

from hardneg import storage
from hardneg.config import RunConfig
from hardneg.miners import GEO_REMOVED, GeoResult
from hardneg.pipelines.figures import geo_figures
from hardneg.pipelines.heldout import evaluate_places_stage, heldout_record, holdout_places
from hardneg.pipelines.inputs import group_codes
from hardneg.pipelines.write import batch_stage, kept_rows, places_table
from hardneg.places import load_places
from hardneg.rundir import RoundManifest, stage_timing

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
    mined_dir = here.join("mined")
    result, mine_stages = mine_places(cfg, here, places.table, groups, mined_dir, round_index, encoder)
    stages.update(mine_stages)

    keep = kept_rows(cfg, result.counts)
    figures = geo_figures(result, int(keep.sum()), places)
    manifest = {"miner": "geographic", "round": round_index, "encoder": encoder, "figures": figures}
    if not storage.is_committed(mined_dir):
        if not keep.any():  # every place dropped (mine.on_short=drop): an empty table, so readers find the schema
            n = cfg.mine.num_negatives
            empty = places_table(places.table.slice(0, 0), np.zeros((0, n), np.int64), round_index, encoder,
                                 negative_km=np.zeros((0, n), np.float32))
            storage.write_parquet(empty, mined_dir.join(f"part-{0:012d}.parquet"))
        storage.commit(mined_dir, {"kind": "mined", **manifest, "rows": int(keep.sum()),
                                   "parts": len(storage.list_table_files(mined_dir.url))})
    outputs = {"mined": mined_dir.url}
    if cfg.mine.batches:
        started = time.perf_counter()
        outputs["batches"] = batch_stage(cfg, here, storage.read_table(mined_dir.url), result.negative_rows, keep, (groups, lat, lon),
                                         round_index, figures)
        stages["batches"] = stage_timing(started, len(keep))
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


def geo_index_config(cfg: RunConfig):
    """``cfg.index`` as the geographic miner searches: on the CPU, and a k-d tree (exact, ~35x faster than the
    exact matmul on 34k places) unless ``index.backend`` is set."""
    update = {"device": "cpu"}
    if "backend" not in cfg.index.model_fields_set:
        update["backend"] = "kdtree"
    return cfg.index.model_copy(update=update)


def mine_places(cfg: RunConfig, here: storage.Location, table: pa.Table, groups: np.ndarray,
                mined_dir: Optional[storage.Location] = None, round_index: int = 0, encoder: str = "base") -> tuple[GeoResult, dict]:
    """The geographic miner (``cfg.mine``) over every place of ``table`` (``groups``: its group codes,
    ``place_arrays``) as the mine stage runs it, and the ``places`` and ``mine`` stage timings.

    The places are committed to ``here/places/`` in files of ``index.query_batch_size`` rows, one task each;
    ``index.num_shards`` ``PlaceShard``s hold them and their index (in process, or Ray actors). Each task
    writes its rows into ``mined_dir`` (prepared here; nothing is written when None or already committed)
    and returns its negatives, gathered here in place order.
    """
    from hardneg.pipelines.mine import MinePlan, run_tasks
    from hardneg.pipelines.place_shards import shard_ranges, write_places

    started = time.perf_counter()
    index_cfg = geo_index_config(cfg)
    files = write_places(table, groups, here.join("places"), cfg.index.query_batch_size)
    shards = shard_ranges(table.num_rows, cfg.index.num_shards)
    stages = {"places": stage_timing(started, table.num_rows)}
    started = time.perf_counter()
    writing = mined_dir is not None and not storage.is_committed(mined_dir)
    if writing:
        storage.prepare_output(mined_dir)
    plan = MinePlan(cfg=cfg.model_copy(update={"index": index_cfg}), params=cfg.mine, depth=0, queries_dir="",
                    out_dir=mined_dir.url if writing else None, files=[[f] for f in files], heldout=frozenset(),
                    round_index=round_index, encoder=encoder, starts=[shard["offset"] for shard in shards], shard_kwargs=None,
                    storage_options=storage.s3_options(), miner="geographic")
    kwargs = [{"files": files, "shard": shard, "cfg": index_cfg, "storage_options": storage.s3_options()} for shard in shards]
    rows_out, km_out = [None] * len(files), [None] * len(files)
    removed, uncertified, depth = dict.fromkeys(GEO_REMOVED, 0), 0, 0
    for row in run_tasks(plan, kwargs):
        stats = json.loads(row["stats"])
        arrays = np.load(io.BytesIO(row["arrays"]), allow_pickle=False)
        rows_out[row["task"]], km_out[row["task"]] = arrays["negative_rows"], arrays["negative_km"]
        for name, count in stats["removed"].items():
            removed[name] += count
        uncertified, depth = uncertified + stats["uncertified"], max(depth, stats["depth"])
    n = cfg.mine.num_negatives
    negative_rows = np.concatenate(rows_out) if files else np.zeros((0, n), np.int64)
    negative_km = np.concatenate(km_out) if files else np.zeros((0, n), np.float32)
    counts = (negative_rows >= 0).sum(axis=1)
    stages["mine"] = stage_timing(started, table.num_rows)
    return GeoResult(negative_rows, negative_km, counts, removed, int((counts < n).sum()), uncertified, depth), stages
