"""One round of the run directory: embed -> index -> mine -> write, each stage committed on its own.

::

    RUN_DIR/run.yaml                      the resolved config of the first run
    RUN_DIR/inputs/{corpus,queries}/      prepared once, reused by every round
    RUN_DIR/rounds/NNNNN/embeddings/      corpus embeddings (embed stage)
    RUN_DIR/rounds/NNNNN/query_embeddings/
    RUN_DIR/rounds/NNNNN/index/           the persisted index, one file a shard (``hardneg.pipelines.index``)
    RUN_DIR/rounds/NNNNN/mined/           the mined table (DESIGN.md schema)
    RUN_DIR/rounds/NNNNN/<format>/        the triplet / n-tuple / labeled-pair view, when asked
    RUN_DIR/rounds/NNNNN/batches/         mine.batches: rows with batch_id (geographic and mixed miners)
    RUN_DIR/rounds/NNNNN/eval/            held-out recall@k / nDCG@10 of the round's encoder (training loop only)
    RUN_DIR/rounds/NNNNN/MANIFEST.json    written last: the round exists once it does

``mine.miner=geographic`` rounds skip the model: see ``hardneg.pipelines.geo``; ``mine.miner=mixed``
rounds embed the places corpus and mine it both ways: see ``hardneg.pipelines.mixed``.
A stage whose folder is committed is not redone, so a re-run after a crash resumes; a folder
without its MANIFEST.json is cleared and redone. A committed round is returned as it is.

Example::

    manifest = run_round(load_config("examples/quickstart.yaml"))
    manifest["figures"]["negatives_per_query"]
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Optional

from hardneg import storage
from hardneg.config import CorpusConfig, RunConfig, dump_config
from hardneg.errors import ConfigError
from hardneg.pipelines.embed import embed_or_reuse
from hardneg.pipelines.heldout import evaluate_round, split_queries
from hardneg.pipelines.index import index_or_reuse
from hardneg.pipelines.inputs import prepare_inputs
from hardneg.pipelines.geo import geo_round
from hardneg.pipelines.mixed import mixed_round
from hardneg.pipelines.mine import figures, mine_queries, mined_table, stage_timing, write_parts
from hardneg.pipelines.views import view_table

logger = logging.getLogger(__name__)


def round_dir(run_dir: str, round_index: int) -> storage.Location:
    return storage.resolve(run_dir).join("rounds", f"{round_index:05d}")


def run_round(
    cfg: RunConfig, round_index: int = 0, model_path: Optional[str] = None, encoder: str = "base", holdout: bool = False
) -> dict:
    """Make round ``round_index`` of ``cfg.run_dir`` (resuming its committed stages); returns its manifest.

    Args:
        model_path: the encoder that embeds this round (a checkpoint dir); ``cfg.model.path`` when None.
        encoder: the checkpoint id written into the rows and the manifest.
        holdout: leave ``train.eval_fraction`` of the queries out of the mined rows and evaluate the
            round's encoder on them (``hardneg.pipelines.heldout``); what the training loop does.
    """
    if not cfg.run_dir:
        raise ConfigError("run_dir is not set (the folder, local or s3://, that holds the rounds)")
    run_dir = storage.resolve(cfg.run_dir)
    here = round_dir(cfg.run_dir, round_index)
    if storage.is_committed(here):
        logger.info("round %d is already committed: %s", round_index, here.url)
        return storage.read_manifest(here)
    if not storage.exists(run_dir.join("run.yaml")):
        storage.write_text(run_dir.join("run.yaml"), dump_config(cfg))
    if cfg.mine.miner == "geographic":
        return geo_round(cfg, here, round_index, encoder)
    if model_path:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": model_path})})
    if cfg.mine.miner == "mixed":
        return mixed_round(cfg, here, round_index, encoder)

    started = time.perf_counter()
    stages: dict[str, dict] = {}
    inputs = prepare_inputs(cfg, run_dir)
    stages["prepare_inputs"] = stage_timing(started, inputs.queries.num_rows)
    train_queries, heldout_queries = split_queries(inputs.queries, cfg.train) if holdout else (inputs.queries, None)

    embeddings = embed_or_reuse(cfg.model_copy(update={"corpus": inputs.corpus_cfg}), here.join("embeddings"), inputs.corpus)
    stages["embed_corpus"] = {"seconds": embeddings["seconds"], "rows": embeddings["rows"], "rows_per_second": embeddings["rows_per_second"]}
    queries_cfg = CorpusConfig(path=run_dir.join("inputs", "queries").url, id_column="query_id", text_column="query")
    query_embeddings = embed_or_reuse(cfg.model_copy(update={"corpus": queries_cfg}), here.join("query_embeddings"), None, cfg.model.query_prompt)
    stages["embed_queries"] = {"seconds": query_embeddings["seconds"], "rows": query_embeddings["rows"],
                               "rows_per_second": query_embeddings["rows_per_second"]}
    index = index_or_reuse(cfg.index, here.join("embeddings").url, here.join("index"))
    stages["index"] = {"seconds": index["seconds"], "rows": index["rows"],
                       "rows_per_second": round(index["rows"] / max(index["seconds"], 1e-9), 1)}

    mined_dir = here.join("mined")
    if storage.is_committed(mined_dir):
        mined_manifest = storage.read_manifest(mined_dir)
    else:
        mined_manifest = _mine(cfg, replace(inputs, queries=train_queries), here, round_index, encoder)
    stages.update(mined_manifest["stages"])
    round_figures = dict(mined_manifest["figures"])
    if heldout_queries is not None and heldout_queries.num_rows:
        round_figures["eval"] = evaluate_round(cfg, here, heldout_queries)
        seconds = round_figures["eval"]["seconds"]
        stages["eval"] = {"seconds": seconds, "rows": heldout_queries.num_rows,
                          "rows_per_second": round(heldout_queries.num_rows / max(seconds, 1e-9), 1)}
    outputs = {"mined": mined_dir.url}
    if cfg.mine.format != "default":
        outputs[cfg.mine.format] = _view(cfg, mined_dir, here.join(cfg.mine.format))

    manifest = {
        "kind": "round",
        "round": round_index,
        "encoder": encoder,
        "model": embeddings["model"],
        "model_hash": embeddings["model_hash"],
        "inputs": {"queries": cfg.queries.path, "corpus": cfg.corpus.path, "format": cfg.queries.format},
        "config": cfg.model_dump(mode="json"),
        "counts": {"corpus": embeddings["rows"], "queries": query_embeddings["rows"], "rows": mined_manifest["rows"]},
        "stages": stages,
        "figures": round_figures,
        "heldout": {"fraction": cfg.train.eval_fraction, "seed": cfg.train.seed,
                    "queries": heldout_queries.num_rows} if heldout_queries is not None else None,
        "outputs": outputs,
        "seconds": round(sum(stage["seconds"] for stage in stages.values()), 3),
    }
    storage.commit(here, manifest)
    return manifest


def _view(cfg: RunConfig, mined_dir: storage.Location, out: storage.Location) -> str:
    """Write and commit the ``mine.format`` view of the committed mined table (once)."""
    if not storage.is_committed(out):
        view = view_table(storage.read_table(mined_dir.url), cfg.mine.format, cfg.mine.num_negatives)
        storage.prepare_output(out)
        write_parts(view, out)
        storage.commit(out, {"kind": "view", "format": cfg.mine.format, "rows": view.num_rows})
    return out.url


def _mine(cfg: RunConfig, inputs, here: storage.Location, round_index: int, encoder: str) -> dict:
    """Search the committed index + mine + write and commit the mined table."""
    started = time.perf_counter()
    mined = mine_queries(cfg, inputs, here.join("embeddings").url, here.join("query_embeddings").url, here.join("index").url)
    t = mined["timings"]
    table = mined_table(mined, inputs.queries, cfg, round_index, encoder)
    write_started = time.perf_counter()
    mined_dir = storage.prepare_output(here.join("mined"))
    parts = write_parts(table, mined_dir)
    queries = inputs.queries.num_rows
    stages = {
        "load_index": {"seconds": round(t["load_index"], 3), "rows": len(mined["view"].ids),
                       "rows_per_second": round(len(mined["view"].ids) / max(t["load_index"], 1e-9), 1)},
        "search": {"seconds": round(t["search"], 3), "rows": queries, "rows_per_second": round(queries / max(t["search"], 1e-9), 1)},
        "mine": {"seconds": round(t["prepare"] + t["mine"], 3), "rows": queries,
                 "rows_per_second": round(queries / max(t["prepare"] + t["mine"], 1e-9), 1)},
        "write": stage_timing(write_started, table.num_rows),
    }
    manifest = {
        "kind": "mined", "round": round_index, "encoder": encoder, "rows": table.num_rows, "parts": parts,
        "figures": figures(table, mined, cfg.mine.num_negatives), "stages": stages,
        "seconds": round(time.perf_counter() - started, 3),
    }
    storage.commit(mined_dir, manifest)
    return manifest
