"""One round of the run directory, for every miner: inputs -> embed -> index -> mine -> write -> eval.

Each stage commits its own folder (layout: ``hardneg.rundir``), and the round commits one
``RoundManifest`` last. ``mine.miner`` picks the strategy: ``similarity`` (queries against the
corpus embeddings), ``geographic`` (no model: the places' coordinates) or ``mixed`` (both over the places
corpus), the last two by ``hardneg.pipelines.geo.place_round``.
A stage whose folder is committed is not redone, so a re-run after a crash resumes; a folder
without its MANIFEST.json is cleared and redone. A committed round is returned as it is, plus the
``mine.format`` view when it has none yet (a view is derived, so it may follow the round).

Example::

    manifest = run_round(load_config("examples/quickstart.yaml"))
    manifest["figures"]["negatives_per_query"]
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import pyarrow.compute as pc

from hardneg import storage
from hardneg.config import CorpusConfig, RunConfig, dump_config
from hardneg.errors import ConfigError
from hardneg.pipelines.embed import EmbedTarget, embed_or_reuse
from hardneg.pipelines.geo import place_round
from hardneg.pipelines.heldout import evaluate_round, split_queries
from hardneg.pipelines.index import index_or_reuse
from hardneg.pipelines.inputs import prepare_inputs
from hardneg.pipelines.mine import mine_stage
from hardneg.pipelines.own_embeddings import adopt_or_reuse
from hardneg.pipelines.write import write_view
from hardneg.rundir import RoundManifest, commit_round, round_dir, stage_timing, timing

logger = logging.getLogger(__name__)

__all__ = ["round_dir", "run_round"]


def run_round(
    cfg: RunConfig, round_index: int = 0, model_path: Optional[str] = None, encoder: str = "base", holdout: bool = False
) -> dict:
    """Make round ``round_index`` of ``cfg.run_dir`` (resuming its committed stages); returns its manifest.

    Args:
        model_path: the encoder that embeds this round (a checkpoint dir); ``cfg.model.path`` when None.
        encoder: the checkpoint id written into the rows and the manifest.
        holdout: leave ``train.eval_fraction`` of the queries (or of a cross-view corpus's places) out of the
            mined rows and evaluate the round's encoder on them (``hardneg.pipelines.heldout``); what the
            training loop does. A geographic round evaluates ``model_path``, the encoder its block trains from.
    """
    if not cfg.run_dir:
        raise ConfigError("run_dir is not set (the folder, local or s3://, that holds the rounds)")
    run_dir = storage.resolve(cfg.run_dir)
    here = round_dir(cfg.run_dir, round_index)
    if storage.is_committed(here):
        logger.info("round %d is already committed: %s", round_index, here.url)
        return with_view(cfg, here, storage.read_manifest(here))
    if not storage.exists(run_dir.join("run.yaml")):
        storage.write_text(run_dir.join("run.yaml"), dump_config(cfg))
    if model_path and cfg.mine.miner != "geographic":
        # A checkpoint's round embeds with the checkpoint: a user's own vectors served the base model's rounds.
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": model_path}),
                                     "embed": cfg.embed.model_copy(update={"corpus_embeddings": None, "query_embeddings": None})})
    if cfg.mine.miner in ("geographic", "mixed"):
        manifest = place_round(cfg, here, round_index, encoder, model_path, holdout)
    else:
        manifest = similarity_round(cfg, here, round_index, encoder, holdout)
    return commit_round(here, manifest)


def with_view(cfg: RunConfig, here: storage.Location, manifest: dict) -> dict:
    """``manifest`` with the ``mine.format`` view of its similarity round in ``outputs``, written (and committed in
    its own folder) when the round has none yet: a view derives from the committed mined table, so asking a
    committed round for another format adds that view and changes nothing committed."""
    name = cfg.mine.view_name()
    if name == "default" or name in manifest["outputs"] or manifest.get("miner", "similarity") != "similarity":
        return manifest
    url = write_view(cfg, here.join("mined"), here.join(name))
    return {**manifest, "outputs": {**manifest["outputs"], name: url}}


def similarity_round(cfg: RunConfig, here: storage.Location, round_index: int, encoder: str, holdout: bool) -> RoundManifest:
    """Embed corpus and queries, build the index, mine, write (and evaluate the held-out queries); the round's manifest."""
    run_dir = storage.resolve(cfg.run_dir)
    started = time.perf_counter()
    stages: dict[str, dict] = {}
    inputs = prepare_inputs(cfg, run_dir)
    stages["prepare_inputs"] = stage_timing(started, inputs.queries.num_rows)
    train_queries, heldout_queries = split_queries(inputs.queries, cfg.train) if holdout else (inputs.queries, None)

    embeddings, query_embeddings = embed_stage(cfg, inputs, here)
    # One run embeds corpus and queries together: the stage's seconds are that run's (or the adoption's).
    stages["embed"] = timing(max(embeddings["seconds"], query_embeddings["seconds"]), embeddings["rows"] + query_embeddings["rows"])
    index = index_or_reuse(cfg.index, here.join("embeddings").url, here.join("index"))
    stages["index"] = timing(index["seconds"], index["rows"])

    mined_dir = here.join("mined")
    if storage.is_committed(mined_dir):
        mined_manifest = storage.read_manifest(mined_dir)
    else:
        heldout = frozenset(heldout_queries.column("query_id").to_pylist()) if heldout_queries is not None else frozenset()
        # ST widens every query's candidate window by its largest count of rows per anchor (repeated pairs too)
        max_positives = max(int(pc.max(pc.list_value_length(train_queries.column("positive_ids"))).as_py() or 1),
                            inputs.pairs_per_anchor)
        mined_manifest = mine_stage(cfg, inputs.corpus, inputs.corpus_cfg, here, round_index, encoder, heldout,
                                    train_queries.num_rows, max_positives)
    stages.update(mined_manifest["stages"])
    round_figures = dict(mined_manifest["figures"])
    if heldout_queries is not None and heldout_queries.num_rows:
        round_figures["eval"] = evaluate_round(cfg, here, heldout_queries)
        stages["eval"] = timing(round_figures["eval"]["seconds"], heldout_queries.num_rows)
    outputs = with_view(cfg, here, {"outputs": {"mined": mined_dir.url}})["outputs"]
    return RoundManifest(
        miner="similarity", round=round_index, encoder=encoder, model=embeddings["model"] or query_embeddings["model"],
        model_hash=embeddings["model_hash"] or query_embeddings["model_hash"],
        inputs={"queries": cfg.queries.path, "corpus": cfg.corpus.path, "format": cfg.queries.format,
                "corpus_embeddings": embeddings.get("source"), "query_embeddings": query_embeddings.get("source")},
        config=cfg.model_dump(mode="json"),
        counts={"corpus": embeddings["rows"], "queries": query_embeddings["rows"], "rows": mined_manifest["rows"]},
        stages=stages, figures=round_figures, outputs=outputs,
        heldout={"fraction": cfg.train.eval_fraction, "seed": cfg.train.seed,
                 "queries": heldout_queries.num_rows} if heldout_queries is not None else None,
    )


def embed_stage(cfg: RunConfig, inputs, here: storage.Location) -> tuple[dict, dict]:
    """The corpus' and the queries' embeddings manifests: a user's own vectors adopted in place, the rest embedded
    in one run (one Encoder actor pool), a committed folder reused."""
    own = cfg.embed
    queries_cfg = CorpusConfig(path=storage.resolve(cfg.run_dir).join("inputs", "queries").url, id_column="query_id", text_column="query")
    targets = {
        "embeddings": None if own.corpus_embeddings else EmbedTarget(here.join("embeddings").url, inputs.corpus_cfg, inputs.corpus,
                                                                  cfg.model.corpus_prompt),
        "query_embeddings": None if own.query_embeddings else EmbedTarget(here.join("query_embeddings").url, queries_cfg, None,
                                                                            cfg.model.query_prompt),
    }
    embedded = iter(embed_or_reuse(cfg, [target for target in targets.values() if target is not None]))
    sources = {"embeddings": own.corpus_embeddings, "query_embeddings": own.query_embeddings}
    return tuple(next(embedded) if target is not None else adopt_or_reuse(sources[name], here.join(name))
                 for name, target in targets.items())
