"""Re-mining: turn the newest encoder checkpoint into the next committed round of a run directory.

::

    RUN_DIR/rounds/NNNNN/MANIFEST.json          a round; ``encoder`` names the checkpoint that mined it
    RUN_DIR/checkpoints/hardneg/checkpoint_*/   what Ray Train reported (``fit_round`` storage)
    RUN_DIR/checkpoints/blocks/NNNNN/MANIFEST.json
                                                one record per finished training block: the round it
                                                trained on, its checkpoint (id, path, epoch, step), metrics

Only committed things count: a round without its MANIFEST.json and a checkpoint without a block
record are invisible to ``run_state``. ``remine`` is idempotent (a checkpoint that already mined a
round is "nothing to do") and resumes a half-done round (``run_round`` keeps committed stages).

Example::

    status, manifest = remine(load_config("runs/a/run.yaml"))        # newest checkpoint -> next round
    status, manifest = remine(cfg, checkpoint="/models/my-checkpoint")
    run_state("runs/a").rounds[-1].encoder
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Optional

from hardneg import storage
from hardneg.config import RunConfig
from hardneg.errors import ConfigError, InputError
from hardneg.pipelines.run import run_round
from hardneg.rundir import committed_children, round_dir

logger = logging.getLogger(__name__)

RUN_NAME = "hardneg"  # the Ray Train run name: one run per run directory, resumed block after block


@dataclass
class RoundInfo:
    """A committed round: its number, the checkpoint id that mined it and its manifest."""

    index: int
    encoder: str
    manifest: dict


@dataclass
class CheckpointInfo:
    """An encoder checkpoint: ``id`` (what rounds record as ``encoder``), ``path`` (a model directory)."""

    id: str
    path: str
    epoch: int = 0
    step: int = 0
    metrics: dict = field(default_factory=dict)
    block: Optional[int] = None
    round: Optional[int] = None


@dataclass
class RunState:
    """Committed rounds and checkpoints of a run directory, oldest first."""

    run_dir: str
    rounds: list[RoundInfo]
    checkpoints: list[CheckpointInfo]

    def round_of(self, encoder: str) -> Optional[RoundInfo]:
        """The newest committed round mined by ``encoder``."""
        return next((r for r in reversed(self.rounds) if r.encoder == encoder), None)


def checkpoints_dir(run_dir: str) -> storage.Location:
    return storage.resolve(run_dir).join("checkpoints")


def block_dir(run_dir: str, block: int) -> storage.Location:
    return checkpoints_dir(run_dir).join("blocks", f"{block:05d}")


def run_state(run_dir: str) -> RunState:
    """What a run directory holds, ignoring anything uncommitted. A missing directory is an empty run."""
    loc = storage.resolve(run_dir)
    rounds = []
    for index, here in committed_children(loc.join("rounds")):
        manifest = storage.read_manifest(here)
        rounds.append(RoundInfo(index, manifest["encoder"], manifest))
    checkpoints = []
    for block, here in committed_children(checkpoints_dir(run_dir).join("blocks")):
        record = storage.read_manifest(here)
        checkpoints.append(CheckpointInfo(**record["checkpoint"], metrics=record["metrics"], block=block, round=record["round"]))
    return RunState(loc.url, rounds, checkpoints)


def checkpoint_info(path: str) -> CheckpointInfo:
    """A checkpoint given by path: a model directory (``config.json``), with trainer counters when it has them.

    Raises:
        InputError: ``path`` is not a model directory.
    """
    loc = storage.resolve(path)
    if not loc.fs.exists(posixpath.join(loc.path, "config.json")):
        raise InputError(f"--checkpoint {path}: not a model directory (no config.json); give a checkpoint folder or 'latest'")
    state = {}
    state_file = posixpath.join(loc.path, "trainer_state.json")
    if loc.fs.exists(state_file):
        with loc.fs.open(state_file, "r") as handle:
            state = json.load(handle)
    return CheckpointInfo(posixpath.basename(loc.path.rstrip("/")), loc.url, state.get("epoch", 0), state.get("global_step", 0))


def record_block(run_dir: str, block: int, round_index: int, epochs: int, checkpoint_path: str, metrics: dict) -> CheckpointInfo:
    """Commit the record of a finished training block (what makes its checkpoint visible to ``run_state``)."""
    info = checkpoint_info(checkpoint_path)
    info.block, info.round, info.metrics = block, round_index, dict(metrics)
    here = storage.prepare_output(block_dir(run_dir, block))
    storage.commit(here, {
        "kind": "block", "block": block, "round": round_index, "epochs": epochs, "metrics": info.metrics,
        "checkpoint": {"id": info.id, "path": info.path, "epoch": info.epoch, "step": info.step},
    })
    return info


def remine(cfg: RunConfig, checkpoint: str = "latest") -> tuple[str, dict]:
    """Make the next round with ``checkpoint`` (the newest recorded one for ``"latest"``, or a model dir path).

    Returns ``("done", manifest)`` for a round made now, ``("nothing to do", manifest)`` when a committed
    round already has that encoder. With no checkpoint at all, round 0 is made with the base model.

    Raises:
        ConfigError: ``run_dir`` is not set.
        InputError: ``checkpoint`` is not a model directory.
    """
    if not cfg.run_dir:
        raise ConfigError("run_dir is not set (the folder, local or s3://, that holds the rounds)")
    state = run_state(cfg.run_dir)
    if checkpoint == "latest" and not state.checkpoints:
        if state.rounds:
            return "nothing to do", state.rounds[0].manifest
        return "done", run_round(cfg, 0, holdout=True)
    info = state.checkpoints[-1] if checkpoint == "latest" else checkpoint_info(checkpoint)
    existing = state.round_of(info.id)
    if existing is not None:
        logger.info("round %d already has encoder %s", existing.index, info.id)
        return "nothing to do", existing.manifest
    index = state.rounds[-1].index + 1 if state.rounds else 0
    _discard_other_encoder(round_dir(cfg.run_dir, index), info.path)
    logger.info("re-mining round %d with checkpoint %s (%s)", index, info.id, info.path)
    return "done", run_round(scheduled(cfg, index), index, model_path=info.path, encoder=info.id, holdout=True)


def block_epochs(cfg: RunConfig) -> list[int]:
    """Epochs of each training block: ``[remine_every, ..., rest]``, or ``[epochs]`` when never re-mining."""
    every = cfg.train.remine_every or cfg.train.epochs
    return [min(every, cfg.train.epochs - start) for start in range(0, cfg.train.epochs, every)]


def scheduled(cfg: RunConfig, round_index: int) -> RunConfig:
    """The config that mines round ``round_index``: with ``train.gps_epochs``, a round whose training block
    starts at that epoch or later is a similarity round over the places (the mixed miner, no geographic
    negatives), mined with the newest checkpoint; earlier rounds stay geographic."""
    start_epoch = sum(block_epochs(cfg)[:round_index])  # round r trains block r
    if not cfg.train.gps_epochs or round_index == 0 or start_epoch < cfg.train.gps_epochs:
        return cfg
    logger.info("round %d trains from epoch %d >= train.gps_epochs %d: similarity over the places (DSS)",
                round_index, start_epoch + 1, cfg.train.gps_epochs)
    return cfg.model_copy(update={"mine": cfg.mine.model_copy(update={"miner": "mixed", "geo_negatives": 0})})


def _discard_other_encoder(here: storage.Location, model_path: str) -> None:
    """A half-done round started by another checkpoint is cleared; one started by this one resumes (a GPS round
    embeds only its held-out places)."""
    for embeddings in (here.join("embeddings"), here.join("heldout", "text_embeddings")):
        if storage.is_committed(embeddings) and storage.read_manifest(embeddings)["model"] != model_path:
            logger.info("clearing half-done %s: it was started with %s", here.url, storage.read_manifest(embeddings)["model"])
            here.fs.rm(here.path, recursive=True)
            return
