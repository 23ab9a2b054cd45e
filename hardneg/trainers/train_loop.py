"""The Ray Train worker loop: a bi-encoder trained with InfoNCE on a streamed mined round.

A vision encoder (no tokenizer: a round over a places corpus of images) reads its rows' queries,
positives and negatives as images (paths or bytes), decodes and preprocesses them with the
checkpoint's image processor in the worker, and embeds both views with the one encoder, or with
``train.view_weights: separate`` the second view (positives and negatives) with its own encoder,
saved in the checkpoint's ``view/`` folder (``hardneg.model_dir.view_model_path``).

Each worker loads ``hardneg.encoder.Encoder`` (the class the embed pipeline
uses, so a checkpoint embeds exactly as it trained), streams its shard of the
round, and after every epoch reports metrics and a checkpoint directory that
both ``Encoder.load`` and ``sentence_transformers.SentenceTransformer`` load.
The checkpoint also holds ``trainer_state.json`` (step and epoch counters) and
``training_state.pt`` (optimizer, logit scale), so a later ``fit()`` under the
same run name continues from it. The driver is ``hardneg.trainers.fit.fit_round``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from typing import Any, Optional, Sequence

import torch

from hardneg import storage
from hardneg.config import TrainConfig
from hardneg.encoder import Encoder, pad_batch
from hardneg.images import preprocess_images
from hardneg.model_dir import VIEW_FOLDER, view_model_path
from hardneg.trainers.batches import batch_texts, read_batches
from hardneg.trainers.losses import LogitScale, info_nce

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "training_state.pt"


class ContrastiveModel(torch.nn.Module):
    """The encoder (and, with ``train.view_weights: separate``, the second view's own encoder) plus the logit
    scale, in one module so DDP also averages the scale's gradient."""

    def __init__(self, encoder: Encoder, logit_scale: LogitScale, view_encoder: Optional[Encoder] = None):
        super().__init__()
        self.encoder = encoder
        self.logit_scale = logit_scale
        self.view_encoder = view_encoder

    def forward(self, first: dict, second: Optional[dict] = None) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """Model inputs (``input_ids`` and ``attention_mask``, or ``pixel_values``) of the first view, and of the
        second (embedded by the view encoder); their vectors and the scale."""
        second_vectors = None if second is None else (self.view_encoder or self.encoder)(**second)
        return self.encoder(**first), second_vectors, self.logit_scale()


def linear_warmup_decay(warmup_steps: int, total_steps: int):
    """LR multiplier: 0 -> 1 over ``warmup_steps``, then 1 -> 0 at ``total_steps`` (transformers' linear schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def save_checkpoint(path: str, model: ContrastiveModel, optimizer, state: dict) -> None:
    """Write a checkpoint directory: ``Encoder.save`` output (and the view encoder's, in ``view/``) plus the trainer's
    counters and optimizer."""
    model.encoder.save(path)
    if model.view_encoder is not None:
        model.view_encoder.save(os.path.join(path, VIEW_FOLDER))
    with open(os.path.join(path, STATE_FILE), "w") as handle:
        json.dump(state, handle, indent=2)
    torch.save({"optimizer": optimizer.state_dict(), "logit_scale": model.logit_scale.state_dict()}, os.path.join(path, OPTIMIZER_FILE))


def read_trainer_state(path: str) -> dict:
    """The counters of a checkpoint directory (zeros for a plain model directory)."""
    state_file = os.path.join(path, STATE_FILE)
    if not os.path.exists(state_file):
        return {"global_step": 0, "epoch": 0, "fit_id": None, "epoch_in_fit": 0}
    with open(state_file) as handle:
        return json.load(handle)


def load_training_state(path: str) -> dict:
    """The optimizer and logit-scale state of a checkpoint directory, loaded with ``weights_only=True``.

    Only tensors and plain containers load: a file that would run code when unpickled is refused.

    Raises:
        StorageError: the file holds anything else (names the file and what to do).
    """
    import pickle

    from hardneg.errors import StorageError

    state_file = os.path.join(path, OPTIMIZER_FILE)
    try:
        return torch.load(state_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((line.strip() for line in str(err).splitlines() if "Unsupported" in line or "error:" in line),
                      type(err).__name__).split(" Please use")[0]
        raise StorageError(
            f"{state_file}: refused to load: it holds objects other than tensors and plain containers, which could "
            f"run code when unpickled ({reason}). Delete the checkpoint folder if it was not written by hardneg."
        ) from None


def _load_start(config: dict, cfg: TrainConfig) -> tuple[ContrastiveModel, dict, Optional[dict]]:
    """The model to start from: the run's latest checkpoint when there is one, else ``model_path``."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    scale = LogitScale(cfg.temperature, learnable=cfg.learnable_scale)

    def loaded(path: str) -> ContrastiveModel:  # with train.view_weights: separate, the view encoder too (view/, or a copy)
        view_encoder = Encoder.load(view_model_path(path)) if cfg.view_weights == "separate" else None
        return ContrastiveModel(Encoder.load(path), scale, view_encoder)

    if checkpoint is None:
        return loaded(config["model_path"]), read_trainer_state(config["model_path"]), None
    with checkpoint.as_directory() as path:
        logger.info("resuming from checkpoint %s", path)
        model = loaded(path)
        state = read_trainer_state(path)
        saved = load_training_state(path)
    model.logit_scale.load_state_dict(saved["logit_scale"])
    model.logit_scale.log_scale.requires_grad_(cfg.learnable_scale)
    return model, state, saved["optimizer"]


def _model_inputs(encoder: Encoder, values: list, device, modality: str) -> dict:
    """What ``encoder`` takes for ``values``: token ids and mask of texts, or pixels of images (paths or bytes)."""
    if modality == "image":
        return {"pixel_values": torch.from_numpy(preprocess_images(values, encoder.image_processor)).to(device)}
    input_ids, attention = pad_batch(encoder.tokenize(values), encoder.tokenizer.pad_token_id or 0)
    return {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}


def default_views(encoder: Encoder) -> tuple[str, str]:
    """What a round's rows hold when nobody said: images on both sides for a vision encoder, else texts."""
    return ("image", "image") if encoder.tokenizer is None else ("text", "text")


def _train_step(model, encoder: Encoder, frame, cfg: TrainConfig, query_prompt: str, optimizer, scheduler, device,
                view_encoder: Optional[Encoder] = None, views: Optional[Sequence[str]] = None) -> float:
    """One optimizer step on a batch of rows. ``views``: what the queries and what the positives and negatives
    hold, ``"text"`` or ``"image"`` (``default_views`` when None): a dual text+image model (CLIP-style) trains on
    text queries against images through its two towers."""
    queries, positives, negatives, mask = batch_texts(frame, cfg.negatives_per_row)
    rows = len(queries)
    first_view, second_view = views or default_views(encoder)
    if second_view == "image":  # a masked negative (a short row) repeats its row's positive: there is no empty image
        negatives = [value if keep else positives[index // max(1, cfg.negatives_per_row)]
                     for index, (value, keep) in enumerate(zip(negatives, mask.reshape(-1)))]
    if first_view == "text":
        queries = [query_prompt + text for text in queries]
    if view_encoder is None and first_view == second_view:  # one encoder, one pass over every value of the batch
        vectors, _, scale = model(_model_inputs(encoder, queries + positives + negatives, device, first_view))
    else:  # the second view (positives and negatives) through its own encoder, or the other tower of a dual model
        first, second, scale = model(_model_inputs(encoder, queries, device, first_view),
                                     _model_inputs(view_encoder or encoder, positives + negatives, device, second_view))
        vectors = torch.cat([first, second])
    negative_vecs = vectors[2 * rows :].reshape(rows, cfg.negatives_per_row, -1) if cfg.negatives_per_row else None
    loss = info_nce(
        vectors[:rows], vectors[rows : 2 * rows], negative_vecs, scale=scale, symmetric=cfg.symmetric,
        negative_mask=torch.from_numpy(mask).to(device), normalize=encoder.normalize,
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: ``train`` (TrainConfig as a dict), ``model_path``,
    ``epochs``, ``steps_per_epoch``, ``batch_mode``, ``fit_id``, optionally ``query_prompt``, ``views`` (what
    the rows' queries and items hold: ``_train_step``) and ``storage_options`` (``storage.s3_options()`` of the driver).
    """
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(config["train"])
    storage.restore_options(config.get("storage_options", {}))
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.seed)
    module, state, optimizer_state = _load_start(config, cfg)
    module.train()
    # A text model's pooler (BERT's, kept by AutoModel) gets no gradient under mean pooling: DDP must know,
    # or two workers fail on their second step ("parameters that did not receive grad").
    model = ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": True})
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.learning_rate)
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except ValueError as err:  # parameter groups changed, e.g. learnable_scale toggled
            logger.warning("optimizer state not restored: %s", err)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = cfg.learning_rate

    epochs, steps_per_epoch = int(config["epochs"]), int(config["steps_per_epoch"])
    same_fit = state.get("fit_id") == config["fit_id"]
    start_epoch = state.get("epoch_in_fit", 0) if same_fit else 0
    total = epochs * steps_per_epoch
    schedule = linear_warmup_decay(math.ceil(total * cfg.warmup_ratio), total)
    offset = start_epoch * steps_per_epoch  # a retried fit continues its schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step + offset))
    shard = ray.train.get_dataset_shard("train")
    encoder = module.encoder

    for epoch_in_fit in range(start_epoch, epochs):
        losses = []
        batches = read_batches(
            shard, cfg.batch_size, config["batch_mode"], rank, world_size,
            shuffle_buffer=None if config["batch_mode"] else cfg.batch_size * 8, seed=cfg.seed + state["epoch"],
        )
        for frame in batches:
            losses.append(_train_step(model, encoder, frame, cfg, config.get("query_prompt", ""), optimizer, scheduler, device,
                                      module.view_encoder, config.get("views")))
            if len(losses) == steps_per_epoch:
                break  # every worker takes the same number of steps, or DDP waits forever
        state = {
            "global_step": state["global_step"] + len(losses), "epoch": state["epoch"] + 1,
            "fit_id": config["fit_id"], "epoch_in_fit": epoch_in_fit + 1,
        }
        metrics = {
            "loss": sum(losses) / max(1, len(losses)), "steps": state["global_step"], "epoch": state["epoch"],
            "epoch_in_fit": epoch_in_fit + 1, "scale": float(module.logit_scale().detach()),
            "learning_rate": scheduler.get_last_lr()[0],
        }
        _report(metrics, module, optimizer, state, rank)


def _report(metrics: dict, module: ContrastiveModel, optimizer, state: dict, rank: int) -> None:
    """Every rank reports (it is a barrier); only rank 0 writes the checkpoint's contents."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmpdir:
        checkpoint = None
        if rank == 0:
            save_checkpoint(tmpdir, module, optimizer, state)
            checkpoint = ray.train.Checkpoint.from_directory(tmpdir)
        ray.train.report(metrics, checkpoint=checkpoint)
