"""One round of the run directory, for every miner: inputs -> embed -> index -> mine -> write -> eval.

``ordered_round`` runs the stages in that order for every miner. Each stage commits its own folder
(layout: ``hardneg.rundir``), and the round commits one ``RoundManifest`` last. ``mine.miner`` picks
the stages' implementation (``RoundStages``): ``similarity`` (queries against the corpus embeddings,
``SimilarityRound``), ``geographic`` (no model: the places' coordinates) or ``mixed`` (both over the
places corpus), the last two ``hardneg.pipelines.geo.PlaceRound``.
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
from typing import Optional, Protocol

from hardneg import storage
from hardneg.config import CorpusConfig, RunConfig, dump_config
from hardneg.errors import ConfigError
from hardneg.pipelines.embed import EmbedTarget, embed_or_reuse
from hardneg.pipelines.geo import PlaceRound
from hardneg.pipelines.heldout import evaluate_round, heldout_ids_of
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
        miner = PlaceRound(cfg, here, round_index, encoder, model_path, holdout)
    else:
        miner = SimilarityRound(cfg, here, round_index, encoder, holdout)
    return commit_round(here, ordered_round(miner))


def with_view(cfg: RunConfig, here: storage.Location, manifest: dict) -> dict:
    """``manifest`` with the ``mine.format`` view of its similarity round in ``outputs``, written (and committed in
    its own folder) when the round has none yet: a view derives from the committed mined table, so asking a
    committed round for another format adds that view and changes nothing committed."""
    name = cfg.mine.view_name()
    if name == "default" or name in manifest["outputs"] or manifest.get("miner", "similarity") != "similarity":
        return manifest
    url = write_view(cfg, here.join("mined"), here.join(name))
    return {**manifest, "outputs": {**manifest["outputs"], name: url}}


class RoundStages(Protocol):
    """A miner's round, stage by stage: ``ordered_round`` runs the stages in this order, and each one commits its
    folder (a committed folder is reused, so a re-run resumes). ``stages`` collects each stage's timing."""

    def inputs(self, stages: dict) -> None:
        """Read and validate what the round mines (and split off the held-out part)."""

    def embed(self, stages: dict) -> None:
        """Embed what the miner searches, in one run (or adopt the user's own vectors; nothing for a geographic round)."""

    def index(self, stages: dict) -> None:
        """Build and persist the round's index (the places' shards build their own)."""

    def mine(self, stages: dict) -> dict:
        """Run the mine stage and commit ``mined/``; returns the round's figures."""

    def write(self, figures: dict, stages: dict) -> dict:
        """Derive the outputs from ``mined/`` (the ST view, ``batches/``); returns them, ``mined`` included."""

    def evaluate(self, figures: dict, stages: dict) -> None:
        """Evaluate the held-out part (nothing when there is none) into ``figures["eval"]``."""

    def manifest(self, stages: dict, figures: dict, outputs: dict) -> RoundManifest:
        """The round's manifest."""


def ordered_round(miner: RoundStages) -> RoundManifest:
    """The one order of a round's stages, for every miner: inputs -> embed -> index -> mine -> write -> eval."""
    stages: dict[str, dict] = {}
    miner.inputs(stages)
    miner.embed(stages)
    miner.index(stages)
    figures = miner.mine(stages)
    outputs = miner.write(figures, stages)
    miner.evaluate(figures, stages)
    return miner.manifest(stages, figures, outputs)


class SimilarityRound:
    """The similarity miner's stages: queries against the corpus embeddings (``hardneg.pipelines.mine``)."""

    def __init__(self, cfg: RunConfig, here: storage.Location, round_index: int, encoder: str, holdout: bool):
        self.cfg, self.here, self.round_index, self.encoder, self.holdout = cfg, here, round_index, encoder, holdout

    def inputs(self, stages: dict) -> None:
        started = time.perf_counter()
        self.prepared = prepare_inputs(self.cfg, storage.resolve(self.cfg.run_dir))
        stages["inputs"] = stage_timing(started, self.prepared.query_rows)
        # The held-out queries by id: the split reads only the id column, a file at a time (the rows stay in inputs/queries).
        self.heldout = heldout_ids_of(self.prepared.queries_url, self.cfg.train) if self.holdout else None

    def embed(self, stages: dict) -> None:
        self.embeddings, self.query_embeddings = embed_stage(self.cfg, self.prepared, self.here)
        # One run embeds corpus and queries together: the stage's seconds are that run's (or the adoption's).
        stages["embed"] = timing(max(self.embeddings["seconds"], self.query_embeddings["seconds"]),
                                 self.embeddings["rows"] + self.query_embeddings["rows"])

    def index(self, stages: dict) -> None:
        index = index_or_reuse(self.cfg.index, self.here.join("embeddings").url, self.here.join("index"))
        stages["index"] = timing(index["seconds"], index["rows"])

    def mine(self, stages: dict) -> dict:
        mined_dir = self.here.join("mined")
        if storage.is_committed(mined_dir):
            self.mined = storage.read_manifest(mined_dir)
        else:
            left_out = self.heldout or frozenset()
            # ST widens every query's candidate window by its largest count of rows per anchor (repeated pairs too);
            # the held-out queries count as well, so the window does not depend on the split.
            max_positives = max(self.prepared.max_positives, self.prepared.pairs_per_anchor, 1)
            self.mined = mine_stage(self.cfg, self.prepared.corpus, self.prepared.corpus_cfg, self.here, self.round_index, self.encoder,
                                    left_out, self.prepared.query_rows - len(left_out), max_positives)
        stages.update(self.mined["stages"])
        return dict(self.mined["figures"])

    def write(self, figures: dict, stages: dict) -> dict:
        return with_view(self.cfg, self.here, {"outputs": {"mined": self.here.join("mined").url}})["outputs"]

    def evaluate(self, figures: dict, stages: dict) -> None:
        if self.heldout:
            figures["eval"] = evaluate_round(self.cfg, self.here, self.heldout)
            stages["eval"] = timing(figures["eval"]["seconds"], len(self.heldout))

    def manifest(self, stages: dict, figures: dict, outputs: dict) -> RoundManifest:
        cfg, embeddings, query_embeddings, heldout = self.cfg, self.embeddings, self.query_embeddings, self.heldout
        return RoundManifest(
            # the queries' model: the checkpoint itself (its corpus side may have its own view encoder, train.view_weights)
            miner="similarity", round=self.round_index, encoder=self.encoder, model=query_embeddings["model"] or embeddings["model"],
            model_hash=query_embeddings["model_hash"] or embeddings["model_hash"],
            inputs={"queries": cfg.queries.path, "corpus": cfg.corpus.path, "format": cfg.queries.format,
                    "corpus_embeddings": embeddings.get("source"), "query_embeddings": query_embeddings.get("source")},
            config=cfg.model_dump(mode="json"),
            counts={"corpus": embeddings["rows"], "queries": query_embeddings["rows"], "rows": self.mined["rows"]},
            stages=stages, figures=figures, outputs=outputs,
            heldout={"fraction": cfg.train.eval_fraction, "seed": cfg.train.seed,
                     "queries": len(heldout)} if heldout is not None else None,
        )


def embed_stage(cfg: RunConfig, inputs, here: storage.Location) -> tuple[dict, dict]:
    """The corpus' and the queries' embeddings manifests: a user's own vectors adopted in place, the rest embedded
    in one run (one Encoder actor pool), a committed folder reused."""
    own = cfg.embed
    asked = {"text_column": "query"} if inputs.query_modality == "text" else {"text_column": "text", "image_column": "query"}
    queries_cfg = CorpusConfig(path=storage.resolve(cfg.run_dir).join("inputs", "queries").url, id_column="query_id", **asked)
    targets = {
        # The corpus is the rows' positive and negative side: a checkpoint with its own view encoder embeds it with that.
        "embeddings": None if own.corpus_embeddings else EmbedTarget(here.join("embeddings").url, inputs.corpus_cfg, inputs.corpus,
                                                                  cfg.model.corpus_prompt, view=True),
        "query_embeddings": None if own.query_embeddings else EmbedTarget(here.join("query_embeddings").url, queries_cfg, None,
                                                                            cfg.model.query_prompt),
    }
    embedded = iter(embed_or_reuse(cfg, [target for target in targets.values() if target is not None]))
    sources = {"embeddings": own.corpus_embeddings, "query_embeddings": own.query_embeddings}
    return tuple(next(embedded) if target is not None else adopt_or_reuse(sources[name], here.join(name))
                 for name, target in targets.items())
