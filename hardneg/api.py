"""The Python API: ``mine_hard_negatives`` as sentence-transformers has it, and ``embed``, ``run``, ``remine``.

Each is a thin layer over the command line's own steps (``hardneg.cli``): the same door checks, run-directory
lock, Ray start-up and round. A round's output stays in Parquet in its run directory; ``mine_hard_negatives``
returns it as a ``datasets.Dataset`` memory-mapped from there, so the driver never holds the mined rows.

Example::

    from hardneg import mine_hard_negatives          # was: from sentence_transformers.util import ...
    dataset = mine_hard_negatives(pairs, model, num_negatives=5, relative_margin=0.05)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tempfile
import uuid
from typing import TYPE_CHECKING, Any, Literal, Optional, Sequence, Union

from hardneg import storage
from hardneg.config import RunConfig, load_config, parse_config
from hardneg.door import result_options
from hardneg.errors import ConfigError
from hardneg.pipelines.inputs import text_id

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

ST_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
DOCUMENT_PROMPTS = ("document", "passage", "corpus")  # the prompt names ST's encode_document falls back on


def mine_hard_negatives(
    dataset: Union["Dataset", str],
    model: Any,
    anchor_column_name: Optional[str] = None,
    positive_column_name: Optional[str] = None,
    corpus: Optional[list[str]] = None,
    cross_encoder: Any = None,
    range_min: int = 0,
    range_max: Optional[int] = None,
    max_score: Optional[float] = None,
    min_score: Optional[float] = None,
    absolute_margin: Optional[float] = None,
    relative_margin: Optional[float] = None,
    num_negatives: int = 3,
    sampling_strategy: Literal["random", "top"] = "top",
    query_prompt_name: Optional[str] = None,
    query_prompt: Optional[str] = None,
    corpus_prompt_name: Optional[str] = None,
    corpus_prompt: Optional[str] = None,
    include_positives: bool = False,
    output_format: Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"] = "triplet",
    output_scores: bool = False,
    batch_size: int = 32,
    faiss_batch_size: int = 16384,
    use_faiss: bool = False,
    use_multi_process: Union[list[str], bool] = False,
    verbose: bool = True,
    cache_folder: Optional[str] = None,
    as_triplets: Optional[bool] = None,
    margin: Optional[float] = None,
    *,
    run_dir: Optional[str] = None,
    index: Optional[str] = None,
    num_shards: int = 1,
    ray_address: Optional[str] = None,
    new_round: bool = False,
    options: Optional[dict] = None,
) -> "Dataset":
    """Add hard negatives to (anchor, positive) pairs: sentence-transformers' ``mine_hard_negatives``, run as a hardneg round.

    The signature, the defaults and the output formats are ST 6.2's (``sentence_transformers.util.mine_hard_negatives``);
    see its documentation for each argument. The round runs in this process for inputs of at most
    ``ray.in_process_max_bytes`` (no Ray at all, ``hardneg.ray_runtime.round_executor``), else on Ray (a local instance,
    or the cluster this process is connected to or ``ray_address`` names); it writes Parquet into ``run_dir``, and the result is a ``datasets.Dataset``
    memory-mapped from that Parquet.

    Args:
        dataset: a ``datasets.Dataset`` of pairs, or a path (Parquet or JSONL, file, folder or glob, local or ``s3://``).
        model: a ``SentenceTransformer`` (saved into the run directory so Ray actors can load it) or a model directory.
        corpus: extra candidate texts besides the positives.
        cross_encoder: a ``CrossEncoder`` or a model directory; rescores the candidates and the positives.
        range_min, range_max, max_score, min_score, absolute_margin, relative_margin, num_negatives,
        sampling_strategy, include_positives, output_format, output_scores: as ST (``range_max`` unset: ST's default,
            ``range_min + num_negatives + max_positives``, or ``range_min + 10 * num_negatives + max_positives``
            with a margin or ``max_score``).
        query_prompt_name, query_prompt, corpus_prompt_name, corpus_prompt: as ST; names are looked up in the
            model's ``prompts``.
        batch_size: texts per encoder forward pass (``embed.batch_size``) and per cross-encoder batch.
        faiss_batch_size: queries searched at once (``index.query_batch_size``).
        use_faiss: search with a faiss flat inner-product index instead of the exact torch search.
        verbose: print the counts and the "Could not find enough negatives" line, as ST.
        cache_folder: where the run directories go, each named by a hash of the inputs, the model and the mining
            options, so a call with the same ones reuses its committed round (another ``output_format`` is another
            view of it) and different ones make their own. Unset: a temporary folder kept for this process.
        as_triplets, margin: ST's deprecated aliases of ``output_format`` and ``absolute_margin``.
        run_dir: hardneg's run directory (local or ``s3://``) instead of one under ``cache_folder``. It holds the
            returned dataset's files, so keep it while you use the dataset.
        index: hardneg's search backend (``exact``, ``flat``, ``ivf``, ``ivfpq``, ``hnsw``); overrides ``use_faiss``.
        num_shards: corpus shards, each searched by a Ray actor.
        ray_address: the Ray cluster to join (else ``RAY_ADDRESS``, else a local instance).
        new_round: mine the next round of an existing ``run_dir`` with these options (without it, a run directory
            made with other options is refused with a ``ValueError`` naming them).
        options: any other hardneg config value by dotted path, e.g. ``{"embed.num_actors": 2}``.

    Returns:
        ``datasets.Dataset`` with ST's columns, the anchor and positive columns keeping the input's names.

    Raises:
        ValueError: a bad argument, as ST (hardneg's ``ConfigError`` and ``InputError`` are ``ValueError``s).

    Example::

        from datasets import load_dataset
        from sentence_transformers import SentenceTransformer
        from hardneg import mine_hard_negatives

        pairs = load_dataset("sentence-transformers/natural-questions", split="train")
        model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
        triplets = mine_hard_negatives(pairs, model, num_negatives=5, relative_margin=0.05, use_faiss=True,
                                       run_dir="runs/nq")
        triplets.column_names   # ['query', 'answer', 'negative']

    Differs from sentence-transformers:

    - ``sampling_strategy="random"`` draws with its own seeded generator (``mine.seed``): the same pool as ST,
      other draws; a re-run gives the same draw. ``"weighted"`` (score-weighted) is hardneg's own.
    - A candidate whose text equals the query's is never a negative (ST may pick it), and one text under two ids
      is one candidate (ST de-duplicates its corpus, so the same).
    - With ``cross_encoder``, every candidate is rescored, with or without a score filter (ST rescores only when a
      margin, ``max_score`` or ``min_score`` is set), because its scores are the ones the output reports.
    - ``use_multi_process`` is accepted and ignored: Ray runs the encoders, one actor per GPU or one on CPU.
    - ``cache_folder`` holds run directories, not ``.npy`` embedding files; without it, calls in one process with
      the same inputs and options reuse one round (the result is deterministic) instead of mining again.
    - The prompts are prepended to the texts; a model's default prompts (``default_prompt_name``) are not applied
      unless named, except ST's ``query`` and ``document`` / ``passage`` / ``corpus`` fallbacks.
    """
    if as_triplets is not None:
        output_format = "triplet" if as_triplets else "n-tuple"
        logger.warning("as_triplets is deprecated; use output_format (set to %r)", output_format)
    if margin is not None:
        absolute_margin = margin
        logger.warning("margin is deprecated; use absolute_margin or relative_margin (absolute_margin set to %s)", margin)
    if output_format == "n-tuple-scores":
        output_format, output_scores = "n-tuple", True
    if include_positives:
        if (range_min != 0 or range_max is not None or max_score is not None or min_score is not None
                or absolute_margin is not None or relative_margin is not None or sampling_strategy != "top"):
            logger.warning("With include_positives=True, changing range_min, range_max, max_score, min_score, absolute_margin, "
                           "relative_margin or sampling_strategy from their defaults may still discard the positive values.")
        if output_format != "n-tuple":
            logger.warning('With include_positives=True, output_format is set to "n-tuple" to keep the ranking order.')
            output_format = "n-tuple"
    if output_format not in ST_FORMATS:
        raise ValueError(f"Invalid output_format: {output_format}. Must be one of {', '.join(map(repr, ST_FORMATS))}.")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got num_negatives={num_negatives}.")
    if range_min < 0:
        raise ValueError(f"range_min must be non-negative, got range_min={range_min}.")
    if faiss_batch_size <= 0:
        raise ValueError(f"faiss_batch_size must be a positive integer, got {faiss_batch_size}.")

    pairs_path, anchor, positive, fingerprint = _pairs_source(dataset, anchor_column_name, positive_column_name)
    base = run_dir or cache_folder or _process_cache()
    model_path, prompts = _model_dir(model, base)
    cross_encoder_path = _model_dir(cross_encoder, base)[0] if cross_encoder is not None else None
    data: dict[str, Any] = {
        "queries": {"format": "pairs", "anchor_column": anchor, "positive_column": positive},
        "model": {"path": model_path, "query_prompt": _prompt(query_prompt, query_prompt_name, prompts, ("query",)),
                  "corpus_prompt": _prompt(corpus_prompt, corpus_prompt_name, prompts, DOCUMENT_PROMPTS)},
        "embed": {"batch_size": batch_size},
        "index": {"backend": index or ("flat" if use_faiss else "exact"), "num_shards": num_shards,
                  "query_batch_size": faiss_batch_size},
        "mine": {"num_negatives": num_negatives, "range_min": range_min, "range_max": range_max, "max_score": max_score,
                 "min_score": min_score, "absolute_margin": absolute_margin, "relative_margin": relative_margin,
                 "sampling_strategy": sampling_strategy, "include_positives": include_positives, "format": output_format,
                 "output_scores": output_scores, "cross_encoder": cross_encoder_path, "cross_encoder_batch_size": batch_size},
        "ray": {"address": ray_address},
    }
    cfg = parse_config(data, "mine_hard_negatives", overrides=options)  # bad values are refused before anything is written
    if run_dir is None:  # one run directory per inputs and result options (door.result_options: not the format, a view)
        key = json.dumps([fingerprint, _corpus_key(corpus), result_options(cfg)], sort_keys=True, default=str)
        base = posixpath.join(base, "run-" + hashlib.sha256(key.encode()).hexdigest()[:16])
    if pairs_path is None:
        pairs_path = _write_pairs(dataset, anchor, positive, base, fingerprint)
    data["queries"]["path"] = pairs_path
    if corpus is not None:
        data["corpus"] = {"path": _write_corpus(corpus, base)}
    cfg = parse_config({**data, "run_dir": base}, "mine_hard_negatives", overrides=options)

    from hardneg.cli import mine_round

    manifest = mine_round(cfg, "mine_hard_negatives", new_round)
    result = _dataset_from(manifest["outputs"][cfg.mine.view_name()], base)
    if verbose:
        _print_summary(manifest, cfg, len(result))
    return result


_PROCESS_CACHE: list[str] = []


def _process_cache() -> str:
    """A temporary folder for this process's run directories: kept while it runs (the returned datasets map
    files in it), removed when it exits."""
    if not _PROCESS_CACHE:
        import atexit
        import shutil

        _PROCESS_CACHE.append(tempfile.mkdtemp(prefix="hardneg-"))
        atexit.register(shutil.rmtree, _PROCESS_CACHE[0], ignore_errors=True)
    return _PROCESS_CACHE[0]


def _pairs_source(dataset: Any, anchor: Optional[str], positive: Optional[str]) -> tuple[Optional[str], str, str, str]:
    """(path or None to write one, anchor column, positive column, fingerprint); columns chosen as ST chooses them."""
    if isinstance(dataset, (str, os.PathLike)):
        path = str(dataset)
        files = storage.list_table_files(path)
        if not files:
            raise ValueError(f"dataset: no Parquet or JSONL files at {path}")
        columns = storage.read_table_file(files[0]).column_names
        fingerprint = path
    else:
        if len(dataset) == 0:
            raise ValueError("The dataset is empty. Please provide a non-empty dataset.")
        columns, path, fingerprint = dataset.column_names, None, dataset._fingerprint
    if not anchor or anchor not in columns:
        anchor = columns[0]
    if not positive or positive not in columns:
        if len(columns) < 2:
            raise ValueError("Dataset must contain at least two columns to select the positive column automatically.")
        positive = columns[1]
    return path, anchor, positive, fingerprint


def _write_pairs(dataset: "Dataset", anchor: str, positive: str, base: str, fingerprint: str) -> str:
    """The pairs as ``BASE/source/pairs-<fingerprint>.parquet``, written once (a re-run finds the same file)."""
    loc = storage.resolve(base).join("source", f"pairs-{fingerprint}.parquet")
    if not storage.exists(loc):
        pairs = dataset.select_columns([anchor, positive])
        pairs = pairs if pairs._indices is None else pairs.flatten_indices()  # a .select()/.shuffle() view: materialise its rows
        storage.write_parquet(pairs.data.table, loc)
    return loc.url


def _corpus_key(corpus: Optional[Sequence[str]]) -> Optional[str]:
    if corpus is None:
        return None
    return hashlib.sha256("\x00".join(corpus).encode("utf-8")).hexdigest()[:16]


def _write_corpus(corpus: Sequence[str], base: str) -> str:
    """The extra corpus as ``BASE/source/corpus-<hash>.parquet`` (``id`` = content id, ``text``), one row a text."""
    import pyarrow as pa

    loc = storage.resolve(base).join("source", f"corpus-{_corpus_key(corpus)}.parquet")
    if not storage.exists(loc):
        texts = list(dict.fromkeys(corpus))
        storage.write_parquet(pa.table({"id": [text_id(text) for text in texts], "text": texts}), loc)
    return loc.url


def _model_dir(model: Any, base: str) -> tuple[str, dict]:
    """(a local directory Ray actors load the model from, the model's prompts). A model object is saved under
    ``BASE/models/<content hash>`` (or a local temporary folder when ``BASE`` is remote), once per content."""
    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        config = os.path.join(path, "config_sentence_transformers.json")
        prompts = {}
        if os.path.exists(config):
            with open(config) as handle:
                prompts = json.load(handle).get("prompts") or {}
        return path, prompts
    if not callable(getattr(model, "save", None)):
        raise ConfigError(f"model: a {type(model).__name__} is neither a model directory nor a SentenceTransformer or CrossEncoder "
                          "(nothing to save for the Ray actors to load); pass the model's directory")
    from hardneg.encoder import model_fingerprint

    root = base if storage.is_local(storage.resolve(base)) else tempfile.gettempdir()
    root = os.path.join(storage.resolve(root).path, "models")
    staging = os.path.join(root, f"tmp-{uuid.uuid4().hex[:8]}")
    model.save(staging)
    final = os.path.join(root, model_fingerprint(staging))
    if os.path.exists(final):
        import shutil

        shutil.rmtree(staging)
    else:
        os.replace(staging, final)
    return final, dict(getattr(model, "prompts", None) or {})


def _prompt(prompt: Optional[str], name: Optional[str], prompts: dict, fallbacks: Sequence[str]) -> str:
    """ST's rule: a raw prompt wins, then a named one (which must exist), then the first fallback name the model has."""
    if prompt is not None:
        return prompt
    if name is not None:
        if name not in prompts:
            raise ValueError(f"Prompt name '{name}' not found in the configured prompts dictionary with keys {list(prompts)!r}.")
        return prompts[name]
    return next((prompts[key] for key in fallbacks if key in prompts), "")


def _dataset_from(view_url: str, base: str) -> "Dataset":
    """The view's Parquet parts as a memory-mapped ``datasets.Dataset`` (its Arrow cache next to the run's rounds)."""
    from datasets import Dataset

    loc = storage.resolve(view_url)
    if storage.read_manifest(loc)["rows"] == 0:  # datasets' Parquet reader refuses a file without rows
        from datasets.table import InMemoryTable

        return Dataset(InMemoryTable(storage.read_table(loc.url)))
    files = sorted(path for path in loc.fs.ls(loc.path, detail=False) if path.endswith(".parquet"))
    if storage.is_local(loc):
        return Dataset.from_parquet(files, cache_dir=os.path.join(storage.resolve(base).path, "datasets-cache"))
    return Dataset.from_parquet([f"{loc.url.split('://')[0]}://{path}" for path in files], storage_options=storage.s3_options())


def _print_summary(manifest: dict, cfg: RunConfig, rows: int) -> None:
    """ST's closing lines (``verbose=True``): counts, and how many samples lack negatives and what to adjust."""
    pairs, queries, n = manifest["counts"]["rows"], manifest["counts"]["queries"], cfg.mine.num_negatives
    fmt = cfg.mine.format
    possible = {"triplet": pairs * n, "labeled-pair": pairs + queries * n}.get(fmt, pairs)
    print(f"Mined {rows:,} rows ({fmt}) for {queries:,} queries and {pairs:,} (query, positive) pairs; "
          f"round {manifest['round']} in {cfg.run_dir}")
    missing = possible - rows
    if missing > 0:
        solutions = ["range_max"] + ["range_min"] * (cfg.mine.range_min > 0) + [
            name for name in ("absolute_margin", "relative_margin", "max_score") if getattr(cfg.mine, name) is not None]
        names = solutions[0] if len(solutions) == 1 else ", ".join(solutions[:-1]) + " and " + solutions[-1]
        print(f"Could not find enough negatives for {missing} samples ({missing / possible:.2%}). Consider adjusting the "
              f"{names} parameter{'s' if len(solutions) > 1 else ''} if you'd like to find more valid negatives.")


def embed(corpus: str, output: str, model: Optional[str] = None, options: Optional[dict] = None) -> dict:
    """Embed a corpus (``id``, ``text``; Parquet or JSONL, local or ``s3://``) into Parquet shards at ``output``.

    What ``hardneg embed CORPUS OUTPUT`` does; returns the embeddings' manifest (model, hash, dim, rows, ...).

    Args:
        model: a model directory; the packaged all-MiniLM-L6-v2 when None.
        options: other config values by dotted path, e.g. ``{"embed.batch_size": 128, "embed.dtype": "float16"}``.

    Example::

        manifest = hardneg.embed("corpus.jsonl", "out/embeddings", options={"embed.batch_size": 128})
        manifest["rows"], manifest["dim"]
    """
    from hardneg.cli import embed_into

    overrides = {"corpus.path": corpus, "model.path": model, **(options or {})}
    return embed_into(parse_config({}, "hardneg.embed", overrides), output)


def run(config: Union[str, dict, RunConfig], options: Optional[dict] = None, new_round: bool = False) -> dict:
    """Embed, index and mine round 0 of ``config``'s run directory (what ``hardneg run CONFIG`` does); its manifest.

    Args:
        config: a YAML file (local or ``s3://``), a mapping of sections, or a ``RunConfig``.
        options: config values by dotted path that override ``config``, e.g. ``{"mine.num_negatives": 5}``.
        new_round: mine the next round of an existing run directory with these options.

    Example::

        manifest = hardneg.run("examples/quickstart.yaml", {"run_dir": "runs/q"})
        manifest["outputs"]["mined"]      # the Parquet folder
    """
    from hardneg.cli import mine_round

    if isinstance(config, RunConfig):
        cfg = parse_config(config.model_dump(mode="json"), "hardneg.run", options)
    elif isinstance(config, dict):
        cfg = parse_config(config, "hardneg.run", options)
    else:
        cfg = load_config(config, options)
    return mine_round(cfg, "run", new_round)


def remine(run_dir: str, checkpoint: str = "latest") -> tuple[str, dict]:
    """Turn the newest checkpoint (or ``checkpoint``, a model directory) into the next round of ``run_dir``.

    What ``hardneg remine RUN_DIR`` does: idempotent, returns ``("done" | "nothing to do", round manifest)``.

    Example::

        status, manifest = hardneg.remine("runs/a")
        status, manifest["round"], manifest["encoder"]
    """
    from hardneg.cli import load_run, remine_run

    return remine_run(load_run(run_dir), checkpoint)
