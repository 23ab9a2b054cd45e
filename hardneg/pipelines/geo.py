"""A round over places, for the geographic and the mixed miner: places corpus -> [embed] -> places/ -> the mine
stage -> mined/ (and batches/) -> manifest.

The places are written once (``rounds/NNNNN/places/``, files of ``index.query_batch_size`` rows) and mined by
the mine stage (``hardneg.pipelines.mine.run_tasks``) with the round's strategy: ``index.num_shards``
``PlaceShard``s (``hardneg.pipelines.place_shards``) hold the places' 3-D unit vectors in an index (in
process, or as Ray actors), and each task mines one file's places and writes their rows.

- geographic: no model and no embedding. The exact backend runs in float32 on the CPU here: fp16 cannot
  tell places a few km apart. Unless ``index.backend`` is set, the shards use a k-d tree (exact, and ~35x
  faster than the matmul on 34k places).
- mixed (``hardneg.pipelines.mixed``): the places' views are embedded first, the index stage commits a
  similarity index over them (``index.*``, ``rounds/NNNNN/index/``), and the shards also hold their vectors
  and their shard of that index; the geographic half always uses the k-d tree.

Each task sends back its figures (``hardneg.pipelines.figures.Tally``: a histogram, sums and bounded samples),
so without ``mine.batches`` the driver holds nothing that grows with the places. With it, the driver keeps
each place's negatives' rows (8 bytes a negative) and the places' coordinates and group codes, which the
batch walk needs whole (docs/scaling.md: what stays global).

Output, one row per place (``rounds/NNNNN/mined/``): ``query_id``, ``query`` (text or null),
``negative_ids``, ``negatives`` (texts or nulls), ``negative_km``, ``round``, ``encoder`` (a mixed round
adds ``negative_scores`` and ``negative_source``). With ``mine.batches``, ``rounds/NNNNN/batches/`` holds
the same rows plus ``batch_id``, sorted by it, each Parquet row group made of whole batches
(``compose_batches``, epoch = round).
With ``holdout`` (the training loop) a cross-view corpus's held-out places are left out before the
search and evaluated with the encoder the round's block trains from (``hardneg.pipelines.heldout``).

Example::

    cfg = load_config(overrides={"mine.miner": "geographic", "corpus.path": "cities.jsonl", "index.backend": "kdtree"})
    manifest = ordered_round(PlaceRound(cfg, storage.resolve("runs/geo/rounds/00000")))
    manifest.figures["negative_km"]["p50"]
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Optional

import numpy as np

from hardneg import storage
from hardneg.config import RunConfig
from hardneg.pipelines.figures import Tally, geo_figures, mixed_figures
from hardneg.pipelines.heldout import evaluate_places_stage, heldout_record
from hardneg.pipelines.place_shards import place_arrays, place_files, place_index, write_places
from hardneg.pipelines.write import batch_stage, kept_rows
from hardneg.rundir import RoundManifest, stage_timing, timing

logger = logging.getLogger(__name__)


class PlaceRound:
    """The stages of a round over places (``hardneg.pipelines.run.RoundStages``), for the geographic and the mixed miner.

    Args:
        model_path: the encoder the held-out places evaluate (``cfg.model.path`` when None): for a geographic
            round, which embeds nothing, the encoder its block trains from.
        holdout: leave ``train.eval_fraction`` of a cross-view corpus's places out and evaluate on them.
    """

    def __init__(self, cfg: RunConfig, here: storage.Location, round_index: int = 0, encoder: str = "base",
                 model_path: Optional[str] = None, holdout: bool = False):
        self.cfg, self.here, self.round_index, self.encoder = cfg, here, round_index, encoder
        self.model_path, self.holdout = model_path, holdout
        self.mixed = cfg.mine.miner == "mixed"
        self.embeddings: dict = {}
        self.similarity: Optional[dict] = None

    def inputs(self, stages: dict) -> None:
        started = time.perf_counter()
        self.places = write_places(self.cfg, self.here, self.holdout)
        stages["inputs"] = stage_timing(started, self.places["corpus"])

    def embed(self, stages: dict) -> None:
        if self.mixed:
            from hardneg.pipelines.mixed import embed_places

            self.embeddings, self.similarity = embed_places(self.cfg, self.here, stages)

    def index(self, stages: dict) -> None:
        """A mixed round's similarity index, built once and committed as ``index/`` (``place_index``); the geographic
        k-d tree over the places' 3-D points is built by each ``PlaceShard`` over its own places (cheap: 3 floats a place)."""
        if self.mixed:
            manifest = place_index(self.cfg, self.here, self.similarity)
            self.similarity["index"] = self.here.join("index").url
            stages["index"] = timing(manifest["seconds"], manifest["rows"])

    def mine(self, stages: dict) -> dict:
        mined_dir = self.here.join("mined")
        figures, self.pool, mine_stages = mine_places(self.cfg, self.here, self.places["dropped"], mined_dir, self.round_index, self.encoder,
                                                      self.similarity)
        stages.update(mine_stages)
        if not storage.is_committed(mined_dir):
            storage.commit(mined_dir, {"kind": "mined", "miner": self.cfg.mine.miner, "round": self.round_index, "encoder": self.encoder,
                                       "figures": figures, "rows": figures["rows"], "parts": len(storage.list_table_files(mined_dir.url))})
        return figures

    def write(self, figures: dict, stages: dict) -> dict:
        outputs = {"mined": self.here.join("mined").url}
        if self.cfg.mine.batches:
            started = time.perf_counter()
            keep = kept_rows(self.cfg, (self.pool >= 0).sum(axis=1))
            outputs["batches"] = batch_stage(self.cfg, self.here, self.pool, keep, place_arrays(self.here), self.round_index, figures)
            stages["batches"] = stage_timing(started, len(keep))
        return outputs

    def evaluate(self, figures: dict, stages: dict) -> None:
        evaluate_places_stage(self.cfg, self.here, self.places["heldout"], figures, stages, self.model_path)

    def manifest(self, stages: dict, figures: dict, outputs: dict) -> RoundManifest:
        return RoundManifest(
            miner=self.cfg.mine.miner, round=self.round_index, encoder=self.encoder, model=self.embeddings.get("model"),
            model_hash=self.embeddings.get("model_hash"), inputs={"corpus": self.cfg.corpus.path}, config=self.cfg.model_dump(mode="json"),
            counts={"corpus": self.places["corpus"], "queries": self.places["rows"], "rows": figures["rows"]},
            stages=stages, figures=figures, outputs=outputs,
            heldout=heldout_record(self.cfg.train, self.places["heldout"]),  # None unless this round split a cross-view corpus
        )


def geo_index_config(cfg: RunConfig):
    """``cfg.index`` as the geographic miner searches: on the CPU, and a k-d tree (exact, ~35x faster than the
    exact matmul on 34k places) unless ``index.backend`` is set for a geographic round (a mixed round's
    ``index.backend`` is its similarity index's)."""
    update = {"device": "cpu"}
    if "backend" not in cfg.index.model_fields_set or cfg.mine.miner == "mixed":
        update["backend"] = "kdtree"
    return cfg.index.model_copy(update=update)


def mine_places(cfg: RunConfig, here: storage.Location, dropped: dict, mined_dir: Optional[storage.Location] = None,
                round_index: int = 0, encoder: str = "base", similarity: Optional[dict] = None) -> tuple[dict, Optional[np.ndarray], dict]:
    """The round's miner (``cfg.mine``: geographic, or mixed with ``similarity``, ``embed_places``' shard argument)
    over every place of the round's committed ``here/places/`` (``write_places``) as the mine stage runs it;
    returns the round's figures (the tasks' ``Tally`` results merged; ``dropped``: the places stage's
    dropped places), the pool (every place's negatives' rows in place order, for the batch stage; None
    without ``mine.batches``) and the ``mine`` stage timing.

    One task per file of ``places/``; ``index.num_shards`` ``PlaceShard``s hold the places and their index (in
    process, or Ray actors). Each task writes its rows into ``mined_dir`` (prepared here; nothing is written
    when None or already committed).
    """
    from hardneg.pipelines.mine import MinePlan, run_tasks
    from hardneg.pipelines.place_shards import shard_ranges

    started = time.perf_counter()
    index_cfg = geo_index_config(cfg)
    files = place_files(here)
    total = sum(rows for _, rows in files)
    shards = shard_ranges(total, cfg.index.num_shards)
    writing = mined_dir is not None and not storage.is_committed(mined_dir)
    if writing:
        storage.prepare_output(mined_dir)
    plan = MinePlan(cfg=cfg.model_copy(update={"index": index_cfg}), params=cfg.mine,
                    depth=min(cfg.mine.candidate_depth() + 1, total),  # mixed: + 1, the place itself comes back first
                    queries_dir="", out_dir=mined_dir.url if writing else None, files=[[f] for f in files], heldout=frozenset(),
                    round_index=round_index, encoder=encoder, starts=[shard["offset"] for shard in shards], shard_kwargs=None,
                    storage_options=storage.s3_options(), miner=cfg.mine.miner,
                    similarity=similarity["cfg"] if similarity else None)
    kwargs = [{"files": files, "shard": shard, "cfg": index_cfg, "storage_options": storage.s3_options(),
               "similarity": similarity} for shard in shards]
    tally, pool = Tally(cfg.mine.num_negatives), [None] * len(files)
    for row in run_tasks(plan, kwargs):
        if row["arrays"]:
            with np.load(io.BytesIO(row["arrays"]), allow_pickle=False) as arrays:
                pool[row["task"]] = arrays["negative_rows"]
        tally.add(**json.loads(row["stats"]))
    if similarity:
        figures = mixed_figures(tally, dropped, plan.depth)
        figures["similarity_of"] = "first view -> other places' view" if similarity["second"] else "place -> place"
    else:
        figures = geo_figures(tally, dropped)
    return figures, np.concatenate(pool) if cfg.mine.batches else None, {"mine": stage_timing(started, total)}
