"""The door: what a command can find wrong, checked in the driver before Ray starts or anything is written.

A command runs its door check first, then takes the run directory's lock, then starts Ray. So a bad
config value, a wrong model path, an unreachable S3 endpoint or a bad input row is refused in seconds
with a message naming the field, path, file, row or column, and leaves the run directory as it was
(no ``run.yaml``, no ``inputs/``, no ``LOCK.json``).

Checked, in order:

1. the S3 endpoint answers for every ``s3://`` path of the config (``storage.check_reachable``);
2. the model directories: ``model.path`` (unless the round is geographic), ``mine.cross_encoder``,
   ``remine --checkpoint`` (``hardneg.model_dir.check_model_dir``);
3. the options: a run directory made with other options is refused (``check_same_options``);
4. the inputs, with the very checks the pipeline runs (``check_inputs``, ``load_places``,
   ``validate_corpus``) but in this process: the corpus files are scanned on threads, not Ray tasks;
   a corpus of images needs a model with an image processor, one of texts a tokenizer (``check_model_reads``).
   Inputs a run directory already committed are only compared with their sources.
5. a user's own embeddings (``embed.corpus_embeddings`` / ``embed.query_embeddings``) against the
   inputs' ids and the model's width (``hardneg.pipelines.own_embeddings.check_own_embeddings``).

Example::

    check_round(load_config("job.yaml"))     # returns, or raises ConfigError / InputError / StorageError
"""

from __future__ import annotations

from typing import Optional

from hardneg import storage
from hardneg.config import RunConfig
from hardneg.corpus import ValidatedCorpus, validate_corpus
from hardneg.errors import ConfigError, StorageError
from hardneg.model_dir import check_model_dir, check_model_reads, default_model_path


def check_reachable(*paths: Optional[str]) -> None:
    """Every ``s3://`` path among ``paths`` has an endpoint that answers (``None`` and local paths pass)."""
    for path in paths:
        if path:
            storage.check_reachable(path)


def check_models(cfg: RunConfig, checkpoint: Optional[str] = None, needs_encoder: bool = True) -> None:
    """The encoder, the cross-encoder and a ``--checkpoint`` are model directories.

    Raises:
        ConfigError: naming the field (``model.path``, ``mine.cross_encoder``, ``--checkpoint``), the path
            and what is wrong.
    """
    if needs_encoder:
        check_model_dir(cfg.model.path or default_model_path(), "model.path")
    if checkpoint is not None:
        check_model_dir(checkpoint, "--checkpoint")
    if cfg.mine.cross_encoder:
        check_model_dir(cfg.mine.cross_encoder, "mine.cross_encoder")


# Fields that change how fast a round runs, not what it writes: a re-run may change them freely.
NOT_RESULT_OPTIONS = {
    "embed": {"batch_size", "block_size", "image_block_size", "part_rows", "num_actors", "gpus_per_actor", "cpus_per_actor", "autocast"},
    "index": {"device", "chunk_size", "query_batch_size", "num_shards", "recall_sample"},
    "mine": {"cross_encoder_batch_size", "cross_encoder_actors", "format", "output_scores"},  # views derive from the mined table (run.with_view)
    "corpus": {"path"}, "queries": {"path"},  # the inputs' files are compared by content (inputs.input_fingerprint)
}
RESULT_SECTIONS = ("corpus", "queries", "model", "embed", "index", "mine")


def result_options(cfg: RunConfig) -> dict:
    """``{"section.field": value}`` of every option that changes what a round writes."""
    dumped = cfg.model_dump(mode="json")
    return {f"{section}.{name}": value for section in RESULT_SECTIONS for name, value in dumped[section].items()
            if name not in NOT_RESULT_OPTIONS.get(section, ())}


def differing_options(before: RunConfig, now: RunConfig) -> list[str]:
    """``"section.field: old -> new"`` for each option that changes a round's output."""
    old, new = result_options(before), result_options(now)
    return [f"{key}: {old.get(key)!r} -> {value!r}" for key, value in new.items() if old.get(key) != value]


def check_same_options(cfg: RunConfig) -> None:
    """A run directory's rounds answer for the options in its ``run.yaml``: other options are refused, never
    answered with the old rounds (a crashed run resumed with the same options passes).

    Raises:
        ConfigError: naming each differing option, its value in the run directory and now.
    """
    from hardneg.config import load_config

    run_yaml = storage.resolve(cfg.run_dir).join("run.yaml")
    if not storage.exists(run_yaml):
        return
    changed = differing_options(load_config(run_yaml.url), cfg)
    if changed:
        raise ConfigError(
            f"{storage.resolve(cfg.run_dir).url} holds rounds made with other options ({run_yaml.url}):\n  "
            + "\n  ".join(changed)
            + "\nits rounds would not answer for these options: use a new run directory, or --new-round "
            "(new_round=True) to mine the next round of this one with them"
        )


def check_round(cfg: RunConfig, checkpoint: Optional[str] = None, training: bool = False, new_round: bool = False) -> None:
    """Everything a round of ``cfg.run_dir`` needs, checked without Ray and without writing.

    Args:
        checkpoint: a model directory the round is mined with (``hardneg remine --checkpoint``).
        training: the command trains the encoder (``hardneg train``), so it needs one even for a
            geographic round.
        new_round: the round will be a new one (``--new-round``), so options other than the run
            directory's are allowed; otherwise they are refused (``check_same_options``).

    Raises:
        ConfigError, InputError, StorageError: the first problem found, named.
    """
    from hardneg.pipelines.inputs import check_inputs
    from hardneg.pipelines.own_embeddings import check_own_embeddings
    from hardneg.places import load_places

    if not cfg.run_dir:
        raise ConfigError("run_dir is not set (the folder, local or s3://, that holds the rounds)")
    own = cfg.embed.corpus_embeddings or cfg.embed.query_embeddings
    if own and cfg.mine.miner != "similarity":
        raise ConfigError(f"embed.corpus_embeddings / embed.query_embeddings: the {cfg.mine.miner} miner embeds places itself; "
                          "your own embeddings serve the similarity miner")
    check_reachable(cfg.run_dir, cfg.corpus.path, cfg.queries.path, cfg.embed.corpus_embeddings, cfg.embed.query_embeddings)
    embeds_nothing = bool(cfg.embed.corpus_embeddings and cfg.embed.query_embeddings) or cfg.mine.miner == "geographic"
    check_models(cfg, checkpoint, needs_encoder=training or not embeds_nothing)
    if not new_round:
        check_same_options(cfg)
    if cfg.mine.miner in ("geographic", "mixed"):
        load_places(cfg.corpus)
        if cfg.mine.miner == "mixed":
            check_model_reads(cfg.model.path or default_model_path(), validate_corpus(cfg.corpus).modality)
    else:
        ids = check_inputs(cfg, storage.resolve(cfg.run_dir), want_ids=bool(own))
        if ids is not None and not embeds_nothing:  # the model embeds the queries' texts, and the corpus unless its vectors are given
            model = checkpoint or cfg.model.path or default_model_path()
            check_model_reads(model, "text", holder="the queries (queries.path)")
            if not cfg.embed.corpus_embeddings:
                check_model_reads(model, ids.modality)
        if ids is not None and own:
            check_own_embeddings(cfg, ids)


def check_embed(cfg: RunConfig, output: str) -> ValidatedCorpus:
    """``hardneg embed``: reachable paths, the model, an output not yet committed and a valid corpus.

    Returns the validated corpus, so the embed stage does not scan it again.
    """
    check_reachable(cfg.corpus.path, output)
    check_models(cfg)
    if storage.is_committed(output):
        raise StorageError(f"{storage.resolve(output).url} is already committed; choose a new output path")
    corpus = validate_corpus(cfg.corpus)
    check_model_reads(cfg.model.path or default_model_path(), corpus.modality)
    return corpus
