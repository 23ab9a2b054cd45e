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
4. the inputs, with the very checks the pipeline runs (``check_inputs``, ``prepare_places``,
   ``validate_corpus``) but in this process: the corpus files are scanned on threads, not Ray tasks;
   a corpus of images needs a model with an image processor, one of texts a tokenizer (``check_model_reads``).
   Inputs a run directory already committed are only compared with their sources.
5. a user's own embeddings (``embed.corpus_embeddings`` / ``embed.query_embeddings``) against the
   inputs' ids and the model's width (``hardneg.pipelines.own_embeddings.check_own_embeddings``).

Example::

    check_round(load_config("job.yaml"))     # returns, or raises ConfigError / InputError / StorageError
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Optional

from hardneg import errors, storage
from hardneg.config import RunConfig, parse_config
from hardneg.corpus import ValidatedCorpus, validate_corpus
from hardneg.errors import ConfigError, HardnegError, StorageError
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

    A round whose inputs (queries, corpus, own embeddings) hold more than ``ray.in_process_max_bytes``, one
    that runs on Ray, is checked in a child process (``check_in_child``): scanning a large corpus leaves
    memory in the allocators (Arrow's pool, glibc's arenas) that a process does not give back, and the
    driver lives as long as the round; the child's exit returns it. Its error is raised here as it was there.

    Args:
        checkpoint: a model directory the round is mined with (``hardneg remine --checkpoint``).
        training: the command trains the encoder (``hardneg train``), so it needs one even for a
            geographic round.
        new_round: the round will be a new one (``--new-round``), so options other than the run
            directory's are allowed; otherwise they are refused (``check_same_options``).

    Raises:
        ConfigError, InputError, StorageError: the first problem found, named.
    """
    if _large(cfg):
        check_in_child(cfg, checkpoint=checkpoint, training=training, new_round=new_round)
    else:
        _check_round(cfg, checkpoint, training, new_round)


def _large(cfg: RunConfig) -> bool:
    """Whether the door's inputs pass ``ray.in_process_max_bytes`` (never under ``ray.in_process: always``); an
    input that cannot be listed is left to the door itself, which names it."""
    from hardneg.ray_runtime import larger_than

    if cfg.ray.in_process == "always":
        return False
    paths = (cfg.queries.path, cfg.corpus.path, cfg.embed.corpus_embeddings, cfg.embed.query_embeddings)
    try:
        check_reachable(*paths)
        return larger_than(paths, cfg.ray.in_process_max_bytes)
    except HardnegError:
        return False


def check_in_child(cfg: RunConfig, **options) -> None:
    """``check_round``'s checks run by a fresh Python (``child_main``); its refusal raised here, same class and text.

    The config goes over stdin as the fields that were set (so defaults resolve alike), with the S3
    endpoint this process configured; credentials stay in the environment the child inherits.
    """
    request = {"config": cfg.model_dump(mode="json", exclude_unset=True), "storage": storage.s3_options(), "options": options}
    done = subprocess.run([sys.executable, "-c", "import sys; from hardneg.door import child_main; sys.exit(child_main())"],
                          input=json.dumps(request), stdout=subprocess.PIPE, text=True)
    if done.returncode == 0:
        return
    lines = done.stdout.strip().splitlines()
    answer = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if "error" not in answer:
        raise HardnegError(f"the door's checks failed in their child process (exit {done.returncode}); its traceback is above")
    cls = getattr(errors, answer["error"], None)
    raise (cls if isinstance(cls, type) and issubclass(cls, HardnegError) else HardnegError)(answer["message"])


def child_main() -> int:
    """The child of ``check_in_child``: the request on stdin; exit 0 when the round passes, else 3 with
    ``{"error": class, "message": text}`` as the last line of stdout."""
    request = json.loads(sys.stdin.read())
    storage.restore_options(request["storage"])
    try:
        _check_round(parse_config(request["config"]), **request["options"])
    except HardnegError as err:
        print(json.dumps({"error": type(err).__name__, "message": str(err)}))
        return 3
    return 0


def _check_round(cfg: RunConfig, checkpoint: Optional[str] = None, training: bool = False, new_round: bool = False) -> None:
    """``check_round``'s checks, in this process."""
    from hardneg.pipelines.inputs import check_inputs
    from hardneg.pipelines.own_embeddings import check_own_embeddings
    from hardneg.places import prepare_places

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
        places = prepare_places(cfg.corpus, texts=cfg.mine.miner == "mixed")
        if cfg.mine.miner == "mixed" or training:  # the model embeds (or trains on) both views
            model = checkpoint or cfg.model.path or default_model_path()
            check_model_reads(model, places.values)
            if places.view_values and places.view_values != places.values:
                check_model_reads(model, places.view_values, holder="the places' second views (corpus.view_image_column)")
    else:
        ids = check_inputs(cfg, storage.resolve(cfg.run_dir), want_ids=bool(own))
        if ids is not None and not embeds_nothing:  # the model embeds the queries, and the corpus unless its vectors are given
            model = checkpoint or cfg.model.path or default_model_path()
            check_model_reads(model, ids.query_modality, holder="the queries (queries.path)")
            if ids.query_modality == "image" and cfg.mine.cross_encoder:
                raise ConfigError("mine.cross_encoder: a cross-encoder scores text pairs; these queries are images")
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
