"""The driver side of training: one ``TorchTrainer.fit()`` per mined round.

Re-running ``fit()`` with the same ``RunConfig`` name and storage path resumes
from that run's latest checkpoint and accepts a new dataset (Ray 2.60, Train
V2), so the re-mining loop calls ``fit_round`` once per round with one ``name``.

Example::

    result = fit_round(cfg.train, model_path, ray.data.read_parquet(mined_dir),
                       storage_path=f"{run_dir}/checkpoints", name="hardneg", epochs=1)
    Encoder.load(result.checkpoint_path)
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from hardneg import storage
from hardneg.config import TrainConfig
from hardneg.errors import ConfigError, InputError
from hardneg.trainers.train_loop import train_loop_per_worker

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a round of training left: the latest checkpoint (a directory ``Encoder.load`` reads) and its metrics."""

    checkpoint_path: Optional[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Any = None


def steps_per_epoch(dataset, train_cfg: TrainConfig, batch_mode: bool) -> int:
    """Optimizer steps each worker takes per epoch; the same on every worker, capped by ``max_steps_per_epoch``."""
    workers = train_cfg.num_workers
    if batch_mode:
        batch_ids = dataset.unique("batch_id")
        steps = min(sum(1 for batch_id in batch_ids if batch_id % workers == rank) for rank in range(workers))
        dropped = len(batch_ids) - steps * workers
    else:
        rows = dataset.count()
        steps = rows // workers // train_cfg.batch_size
        dropped = rows - steps * workers * train_cfg.batch_size
    if dropped:
        logger.info("%d %s per epoch left out so every worker takes %d steps", dropped, "batches" if batch_mode else "rows", steps)
    if steps == 0:
        raise InputError(
            f"mined round: too little data for one step per worker (train.batch_size={train_cfg.batch_size}, "
            f"train.num_workers={workers})"
        )
    return min(steps, train_cfg.max_steps_per_epoch or steps)


def dataset_config(batch_mode: bool):
    """Ray Train's ``DataConfig``: split rows across workers, or (batch mode) give every worker the whole
    round in order, from which ``read_batches`` keeps the batch ids of its rank."""
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    if not batch_mode:
        return DataConfig()
    return DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))


def fit_round(
    train_cfg: TrainConfig,
    model_path: str,
    dataset,
    storage_path: str,
    name: str,
    epochs: Optional[int] = None,
    fit_id: Optional[str] = None,
    query_prompt: str = "",
    resources_per_worker: Optional[dict] = None,
    max_failures: int = 0,
    views: Optional[tuple[str, str]] = None,
) -> FitResult:
    """Train on one mined round with Ray Train; resume the run ``name`` under ``storage_path`` if it has a checkpoint.

    Args:
        train_cfg: the ``train`` config section (batch size, lr, workers, loss options).
        model_path: the model to start from when the run has no checkpoint yet.
        dataset: the mined round as a ``ray.data.Dataset``; with a ``batch_id`` column, whole batches per step.
        storage_path: absolute local path or ``s3://`` URL, e.g. ``RUN_DIR/checkpoints``.
        name: the run name; the same name continues the same run.
        epochs: epochs on this round; ``train_cfg.remine_every`` (or ``train_cfg.epochs``) when unset.
        fit_id: identifies this round's fit; a retry with the same id skips the epochs it finished.
        query_prompt: prepended to queries, as the embed pipeline does (``model.query_prompt``).
        resources_per_worker: Ray resources per worker; Ray's default (1 CPU, 1 GPU with use_gpu) when unset.
        max_failures: worker failures to retry from the latest checkpoint.
        views: what the rows' queries and their positives and negatives hold, ``"text"`` or ``"image"``
            (``hardneg.pipelines.loop.row_views``); None: images for a vision encoder, else texts.

    Example::

        fit_round(TrainConfig(batch_size=16), "/models/minilm", ds, "/runs/a/checkpoints", "hardneg", epochs=1)
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not (storage_path.startswith("s3://") or os.path.isabs(storage_path)):
        raise ConfigError(f"storage_path must be absolute or s3://, got {storage_path!r}")
    batch_mode = "batch_id" in dataset.schema().names
    epochs = epochs or train_cfg.remine_every or train_cfg.epochs
    loop_config = {
        "train": train_cfg.model_dump(), "model_path": model_path, "epochs": epochs,
        "steps_per_epoch": steps_per_epoch(dataset, train_cfg, batch_mode), "batch_mode": batch_mode,
        "fit_id": fit_id or uuid.uuid4().hex, "query_prompt": query_prompt, "views": views,
        "storage_options": storage.s3_options(),  # a worker reads s3:// images on the configured endpoint
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=train_cfg.num_workers, use_gpu=train_cfg.use_gpu, resources_per_worker=resources_per_worker
        ),
        run_config=RunConfig(name=name, storage_path=storage_path, failure_config=FailureConfig(max_failures=max_failures)),
        datasets={"train": dataset},
        dataset_config=dataset_config(batch_mode),
    )
    result = trainer.fit()
    checkpoint = result.checkpoint
    path = None
    if checkpoint is not None:
        path = checkpoint.path if not storage_path.startswith("s3://") or checkpoint.path.startswith("s3://") else f"s3://{checkpoint.path}"
    logger.info("round trained: %s, checkpoint %s", result.metrics, path)
    return FitResult(checkpoint_path=path, metrics=dict(result.metrics or {}), checkpoint=checkpoint)
