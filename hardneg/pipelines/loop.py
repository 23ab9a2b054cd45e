"""The re-mining loop behind ``hardneg train``: mine, train a block of epochs, re-mine with the newest
checkpoint, train on the new round, ... until ``train.epochs``.

Training is cut into blocks of ``train.remine_every`` epochs (one block of ``train.epochs`` when it is 0:
mined once, never re-mined). Block ``b`` is one ``fit_round`` call under the run name ``hardneg`` in
``RUN_DIR/checkpoints`` (so it continues the same Ray Train run) and ends by committing
``checkpoints/blocks/b/MANIFEST.json``. A restart skips committed blocks, resumes a block that died
mid-way from its last epoch checkpoint (same ``fit_id``), and resumes a half-done round.

Synchronous (default): block ``b`` trains on the round mined by block ``b-1``'s checkpoint.
Asynchronous (``train.asynchronous``): when a block ends, its checkpoint re-mines on a Ray task while
the next block already trains on the newest committed round; a block starts on the new round once
that round has committed (the switch happens at block, i.e. ``remine_every``-epoch, boundaries).
The re-mine needs resources the trainer leaves free: its Encoder actor(s) and one CPU per tokenizer
task. Where there are too few (2 CPUs: trainer 1 + Encoder actor 1 leaves none for tokenizing or for
the trainer's own read tasks, and both wait forever), lower ``train.cpus_per_worker`` and
``embed.cpus_per_actor`` (0.5 each there) so one whole CPU stays free.

Example::

    blocks = train_loop(load_config("examples/quickstart.yaml", {"train.epochs": 3}))
    blocks[-1].path     # the last checkpoint; Encoder.load / SentenceTransformer read it
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from hardneg import faults, storage
from hardneg.config import RunConfig
from hardneg.encoder import default_model_path
from hardneg.errors import ConfigError
from hardneg.pipelines.heldout import evaluate_places, heldout_ids_of
from hardneg.pipelines.place_shards import write_places
from hardneg.pipelines.remine import (RUN_NAME, CheckpointInfo, block_epochs, checkpoint_info, checkpoints_dir, record_block, remine,
                                      run_state)
from hardneg.pipelines.run import run_round
from hardneg.rundir import round_dir

logger = logging.getLogger(__name__)


def train_loop(cfg: RunConfig, max_blocks: Optional[int] = None) -> list[CheckpointInfo]:
    """Train the run of ``cfg`` to ``train.epochs``, re-mining between blocks; returns every block's checkpoint.

    Args:
        max_blocks: train at most this many blocks in this call (an orchestrator trains one per tick;
            0 only makes round 0).
    """
    if not cfg.run_dir:
        raise ConfigError("run_dir is not set (the folder, local or s3://, that holds the rounds and checkpoints)")
    plan = block_epochs(cfg)
    state = run_state(cfg.run_dir)
    if not state.rounds:
        run_round(cfg, 0, holdout=True)
    done = {info.block: info for info in state.checkpoints}
    todo = [block for block in range(len(plan)) if block not in done][:max_blocks]
    if len(done) == len(plan):
        logger.info("all %d training blocks are committed; nothing to do", len(plan))
    pending = None
    for block in todo:
        faults.point("loop.round", block=block)
        if cfg.train.asynchronous:
            pending, manifest = _newest_round(cfg, pending)
        elif block == 0 or not cfg.train.remine_every:
            manifest = run_state(cfg.run_dir).rounds[0].manifest
        else:
            manifest = remine(cfg, done[block - 1].path)[1]
        done[block] = _train_block(cfg, block, plan[block], manifest, last=block == len(plan) - 1)
        if cfg.train.asynchronous and block + 1 < len(plan) and pending is None:
            pending = _remine_task(cfg, done[block].path)
    if pending is not None:
        from hardneg.ray_runtime import get

        get(pending)  # the last re-mine still commits (and evaluates) its round
    return [done[block] for block in sorted(done)]


def _train_block(cfg: RunConfig, block: int, epochs: int, manifest: dict, last: bool = False) -> CheckpointInfo:
    from hardneg.trainers.fit import fit_round

    started = time.perf_counter()
    faults.point("loop.train", block=block, round=manifest["round"])
    logger.info("training block %d (%d epoch(s)) on round %d (encoder %s)", block, epochs, manifest["round"], manifest["encoder"])
    result = fit_round(
        cfg.train, cfg.model.path or default_model_path(), round_dataset(cfg, manifest), checkpoints_dir(cfg.run_dir).url,
        RUN_NAME, epochs=epochs, fit_id=f"block-{block:05d}", query_prompt=cfg.model.query_prompt, views=row_views(cfg, manifest),
        resources_per_worker=None if cfg.train.cpus_per_worker is None else
        {"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})},
    )
    metrics = {**result.metrics, "seconds": round(time.perf_counter() - started, 3)}
    final = _evaluate_last_checkpoint(cfg, block, checkpoint_info(result.checkpoint_path).path) if last else None
    if final is not None:
        metrics["eval"] = final
    return record_block(cfg.run_dir, block, manifest["round"], epochs, result.checkpoint_path, metrics)


def _evaluate_last_checkpoint(cfg: RunConfig, block: int, checkpoint_path: str) -> Optional[dict]:
    """The held-out places' recall with the run's last checkpoint (``checkpoints/eval/block-NNNNN/``), which no
    round evaluates: a round evaluates the checkpoint it mines with, and none mines with the last. Cross-view
    places only: their held-out views are all it embeds; a similarity run would embed its whole corpus again
    (``hardneg remine`` does that, and evaluates)."""
    if cfg.mine.miner == "similarity" or not cfg.train.eval_fraction:
        return None
    here = checkpoints_dir(cfg.run_dir).join("eval", f"block-{block:05d}")
    if not write_places(cfg, here, holdout=True, train=False)["rows"]:
        return None
    return evaluate_places(cfg, here, model_path=checkpoint_path)


def row_views(cfg: RunConfig, manifest: dict) -> tuple[str, str]:
    """What a round's rows hold, ``"text"`` or ``"image"``: its queries, and its positives and negatives. A
    similarity round's queries and items are what its query and corpus embeddings were made of; a round over
    places holds its places' values on both sides (``places/``)."""
    here = round_dir(cfg.run_dir, manifest["round"])
    if manifest["miner"] == "similarity":
        return tuple(storage.read_manifest(here.join(name)).get("modality", "text") if storage.is_committed(here.join(name)) else "text"
                     for name in ("query_embeddings", "embeddings"))
    places = here.join("places")
    about = storage.read_manifest(places) if storage.is_committed(places) else {}
    values = about.get("values", "text")
    return values, about.get("view_values") or values


def round_dataset(cfg: RunConfig, manifest: dict):
    """The round's training rows as a Ray Dataset: ``batches/`` when the round has it, else ``mined/``;
    the held-out queries (or cross-view places) are filtered out of a round that was mined without the split
    (``hardneg mine``; its rows may still name a held-out place as a negative)."""
    import ray

    here = round_dir(cfg.run_dir, manifest["round"])
    source = here.join("batches") if storage.is_committed(here.join("batches")) else here.join("mined")
    ds = ray.data.read_parquet(source.url, filesystem=source.arrow_fs(), file_extensions=["parquet"])
    if manifest.get("heldout") is None and cfg.train.eval_fraction:
        held = _heldout_of_unsplit_round(cfg, here, manifest["miner"])
        if held:
            ds = ds.filter(lambda row: row["query_id"] not in held)
    return ds


def _heldout_of_unsplit_round(cfg: RunConfig, here: storage.Location, miner: str) -> frozenset[str]:
    """The held-out ids of the round's queries, or of its places (none when the corpus has no ``view`` column)."""
    if miner == "similarity":
        return heldout_ids_of(storage.resolve(cfg.run_dir).join("inputs", "queries").url, cfg.train)
    places = here.join("places")  # a round without the split has every place
    return heldout_ids_of(places.url, cfg.train, "id") if storage.read_manifest(places)["cross_view"] else frozenset()


def _newest_round(cfg: RunConfig, pending):
    """Asynchronous mode: collect a finished re-mine, then the newest committed round (round 0 made if none)."""
    import ray

    if pending is not None and ray.wait([pending], timeout=0)[0]:
        from hardneg.ray_runtime import get

        get(pending)
        pending = None
    rounds = run_state(cfg.run_dir).rounds
    return pending, rounds[-1].manifest if rounds else run_round(cfg, 0, holdout=True)


def _remine_task(cfg: RunConfig, checkpoint_path: str):
    """Start ``remine(cfg, checkpoint_path)`` on a Ray task (no CPU of its own: its embed actors take them)."""
    import ray

    options = storage.s3_options()

    @ray.remote(num_cpus=0)
    def remine_remote(config: dict, path: str) -> dict:
        storage.restore_options(options)
        faults.point("remine.start", checkpoint=path)
        manifest = remine(RunConfig.model_validate(config), path)[1]
        faults.point("remine.done", checkpoint=path)
        return manifest

    return remine_remote.remote(cfg.model_dump(mode="json"), checkpoint_path)
