"""Embed a corpus with Ray Data: read -> tokenize (CPU tasks) -> Encoder actors -> Parquet shards.

The driver holds neither texts nor vectors: files are read by Ray tasks, token
ids flow as Arrow blocks to a pool of Encoder actors (one GPU each when the
cluster has GPUs), and the actors' output is written by Ray as Parquet shards
with ``id`` and ``embedding`` (fixed-size list). ``MANIFEST.json`` is written
last, so a crash leaves no readable partial output.

The corpus files are grouped into parts of about ``embed.part_rows`` rows, each embedded
into ``OUTPUT/part-NNNNN/`` and committed with its own manifest. Each attempt at a part names
its shards ``a<id>_*.parquet``; it commits only if the part folder holds its own shards alone and
their rows are the rows expected, and the manifest lists them (``shards``), so a commit never
mixes two writers' files. A re-run after a driver
crash keeps the committed parts and embeds only the rest; the output's manifest counts
the rows it reused (``resumed_rows``). Rows are in file order: part by part, and readers take
the shards in sorted path order.

Example::

    summary = embed_corpus(load_config(overrides={"corpus.path": "corpus.jsonl"}), "out/embeddings")
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
import uuid
import warnings
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from hardneg import console, faults, storage
from hardneg.config import EmbedConfig, ModelConfig, RunConfig
from hardneg.corpus import ValidatedCorpus, validate_corpus
from hardneg.encoder import Encoder, default_model_path, model_fingerprint, read_pooling_spec
from hardneg.model_dir import model_dim
from hardneg.resources import ResourcePlan, plan_resources

logger = logging.getLogger(__name__)

_tokenizers: dict[tuple, Any] = {}


def plan_actors(cfg: EmbedConfig) -> ResourcePlan:
    """The Encoder actor pool for ``cfg`` on the running cluster (see ``hardneg.resources.plan_resources``)."""
    return plan_resources(RunConfig(embed=cfg))


def _tokenizer(model_path: str, trust_remote_code: bool):
    key = (model_path, trust_remote_code)
    if key not in _tokenizers:
        from transformers import AutoTokenizer

        _tokenizers[key] = AutoTokenizer.from_pretrained(model_path, local_files_only=True, trust_remote_code=trust_remote_code)
    return _tokenizers[key]


def read_corpus_file(spec: dict, id_column: str, text_column: str) -> pa.Table:
    """Read one corpus file's id and text columns, minus the rows validation dropped."""
    loc = storage.Location(spec["fs"], spec["path"])
    table = storage.read_table_file(loc, [id_column, text_column])
    if len(spec["drop_rows"]):
        keep = np.ones(table.num_rows, dtype=bool)
        keep[spec["drop_rows"]] = False
        table = table.filter(pa.array(keep))
    return pa.table({"id": table.column(id_column), "text": table.column(text_column).cast(pa.string())})


def tokenize_block(block: pa.Table, model_path: str, max_length: int, prefix: str, trust_remote_code: bool) -> pa.Table:
    """Tokenize a block (CPU task) and sort it by length, so the actor's batches carry little padding."""
    tokenizer = _tokenizer(model_path, trust_remote_code)
    texts = block.column("text").to_pylist()
    if prefix:
        texts = [prefix + text for text in texts]
    token_ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    order = np.argsort([-len(ids) for ids in token_ids], kind="stable")
    return pa.table({
        "id": block.column("id").take(pa.array(order)),
        "input_ids": pa.array([token_ids[i] for i in order], type=pa.list_(pa.int32())),
    })


def embedding_array(vectors: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """(n, d) numpy -> Arrow fixed_size_list<float16|float32>[d]."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.dtype(dtype)).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


class EncoderActor:
    """A Ray Data callable class: token-id blocks in, ``id`` + ``embedding`` blocks out."""

    def __init__(self, model: ModelConfig, embed: EmbedConfig, model_path: str, torch_threads: int):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(torch_threads)
        self.encoder = Encoder.load(
            model_path, model.pooling, model.normalize, model.max_length, model.trust_remote_code, device
        )
        self.batch_size = embed.batch_size
        self.dtype = embed.dtype
        self.autocast = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(embed.autocast) if device == "cuda" else None

    def __call__(self, block: pa.Table) -> pa.Table:
        token_lists = block.column("input_ids").to_pylist()
        vectors = self.encoder.encode_tokens(token_lists, batch_size=self.batch_size, autocast=self.autocast)
        faults.point("embed.block", rows=len(token_lists))
        return pa.table({"id": block.column("id"), "embedding": embedding_array(vectors, self.dtype)})


def embed_tables(ds, model: ModelConfig, embed: EmbedConfig, model_path: str, prefix: str = ""):
    """Ray Dataset of (id, text) -> Ray Dataset of (id, embedding). Lazy; nothing runs yet."""
    import ray

    spec = read_pooling_spec(model_path)
    plan = plan_actors(embed)
    max_length = model.max_length or spec.max_seq_length or 512
    logger.info("embedding with %d Encoder actor(s), %.0f GPU and %d torch thread(s) each", plan.num_actors, plan.gpus_per_actor, plan.torch_threads)
    tokens = ds.map_batches(
        tokenize_block,
        batch_size=embed.block_size,
        batch_format="pyarrow",
        fn_kwargs={"model_path": model_path, "max_length": max_length, "prefix": prefix, "trust_remote_code": model.trust_remote_code},
        num_cpus=1,
    )
    with warnings.catch_warnings():
        # Ray 2.60 names no max_restarts / max_task_retries in map_batches: they go as ray_remote_args,
        # which it warns about on every call (RayDeprecationWarning) although there is no other way.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return tokens.map_batches(
            EncoderActor,
            batch_size=None,
            batch_format="pyarrow",
            fn_constructor_kwargs={"model": model, "embed": embed, "model_path": model_path, "torch_threads": plan.torch_threads},
            compute=ray.data.ActorPoolStrategy(size=plan.num_actors),
            num_gpus=plan.gpus_per_actor,
            num_cpus=plan.cpus_per_actor,
            max_restarts=3,
            # Unbounded: while a restarted actor loads its model, Ray fast-fails the calls sent to it and
            # counts each as a retry; 3 ran out when a node was lost mid-block (ActorUnavailableError).
            # The calls still fail once the actor is dead for good (max_restarts spent).
            max_task_retries=-1,
        )


def corpus_dataset(corpus: ValidatedCorpus, id_column: str, text_column: str):
    """A Ray Dataset of (id, text), one read task per validated file."""
    import ray

    specs = [{"fs": loc.fs, "path": loc.path, "drop_rows": rows} for loc, rows in zip(corpus.files, corpus.drop_rows)]

    def read(batch: dict) -> pa.Table:
        return read_corpus_file(specs[int(batch["file"][0])], id_column, text_column)

    files = ray.data.from_items([{"file": index} for index in range(len(specs))], override_num_blocks=len(specs))
    # Half a CPU: reading is I/O, and a different CPU request keeps Ray Data from fusing it with tokenizing,
    # whose tasks would otherwise take block_size *files* each instead of block_size texts.
    return files.map_batches(read, batch_size=1, batch_format="numpy", num_cpus=0.5)


def write_embeddings(ds, out: storage.Location, attempt: str) -> tuple[int, list[str]]:
    """Write the (id, embedding) dataset as Parquet shards ``{attempt}_*.parquet`` under ``out``.

    Returns:
        (rows written, shard names), counted from this attempt's own shards.

    Raises:
        StorageError: ``out`` also holds shards this attempt did not write (another writer).
    """
    from ray.data.datasource import FilenameProvider

    ds.write_parquet(out.path, filesystem=out.arrow_fs(), filename_provider=FilenameProvider(attempt, "parquet"))
    shards = shard_rows(out)
    foreign = sorted(name for name in shards if not name.startswith(f"{attempt}_"))
    if foreign:
        raise storage.StorageError(f"{out.url} holds shards this writer did not write ({', '.join(foreign[:3])}): "
                                   "another writer is writing into it; not committed")
    return sum(shards.values()), sorted(shards)


def shard_rows(out: storage.Location) -> dict[str, int]:
    """``{shard file name: rows}`` of the Parquet shards in a part folder (from their footers)."""
    import pyarrow.parquet as pq

    rows = {}
    for path in out.fs.find(out.path):
        if path.endswith(".parquet"):
            with out.fs.open(path, "rb") as handle:
                rows[posixpath.basename(path)] = pq.ParquetFile(handle).metadata.num_rows
    return rows


def part_is_whole(part_dir: storage.Location, manifest: dict) -> bool:
    """A committed part's shards are the ones its manifest lists, with the rows it counts."""
    shards = shard_rows(part_dir)
    listed = manifest.get("shards")
    return sum(shards.values()) == manifest.get("rows") and (listed is None or sorted(shards) == sorted(listed))


def embed_corpus(cfg: RunConfig, output: str, corpus: Optional[ValidatedCorpus] = None, prefix: str = "") -> dict:
    """Validate, embed and commit a corpus into ``output`` (resuming its committed parts). Returns the manifest.

    ``prefix`` goes before every text (a query prompt such as ``"query: "``).

    Raises:
        InputError: the corpus is invalid (nothing is written).
        StorageError: ``output`` is already committed.
    """
    started = time.perf_counter()
    out = storage.resolve(output)
    if storage.is_committed(out):
        raise storage.StorageError(f"{out.url} is already committed; choose a new output path")
    corpus = corpus or validate_corpus(cfg.corpus)
    model_path = cfg.model.path or default_model_path()
    parts = split_parts(corpus, cfg.embed.part_rows)
    _clear_strays(out, len(parts))
    rows = resumed_rows = 0
    for number, files in enumerate(parts):
        part_dir = out.join(f"part-{number:05d}")
        expected = sum(corpus.valid_rows(i) for i in files)
        urls = [corpus.files[i].url for i in files]
        done = storage.read_manifest(part_dir) if storage.is_committed(part_dir) else {}
        if done and not part_is_whole(part_dir, done):
            logger.warning("%s: its shards disagree with its manifest (%d rows); embedding the part again", part_dir.url, done["rows"])
            part_dir.fs.rm(part_dir.path, recursive=True)
            done = {}
        if done.get("files") == urls and done.get("rows") == expected:
            rows += expected
            resumed_rows += expected
            continue
        part = corpus.subset(files)
        storage.prepare_output(part_dir)
        ds = embed_tables(corpus_dataset(part, cfg.corpus.id_column, cfg.corpus.text_column), cfg.model, cfg.embed, model_path, prefix)
        name = f"embed {posixpath.basename(out.path)}" + (f" part {number + 1}/{len(parts)}" if len(parts) > 1 else "")
        with console.stage(name, rows=expected):
            written, shards = write_embeddings(ds, part_dir, f"a{uuid.uuid4().hex[:12]}")
        if written != expected:
            raise storage.StorageError(f"{part_dir.url}: wrote {written} rows, expected {expected}; not committed")
        storage.commit(part_dir, {"kind": "embeddings-part", "files": urls, "rows": written, "shards": shards})
        rows += written
    if resumed_rows:
        logger.info("resumed: %d of %d rows were already embedded in committed parts", resumed_rows, rows)
    seconds = time.perf_counter() - started
    manifest = embeddings_manifest(cfg, model_path, rows, seconds, corpus)
    manifest.update(parts=len(parts), resumed_rows=resumed_rows)
    storage.commit(out, manifest)
    return manifest


def split_parts(corpus: ValidatedCorpus, part_rows: int) -> list[list[int]]:
    """Consecutive groups of file indices holding about ``part_rows`` valid rows each (whole files).

    Example::

        split_parts(corpus_of_rows([600, 600, 600]), 1000)   # [[0, 1], [2]]
    """
    parts: list[list[int]] = [[]]
    filled = 0
    for index in range(len(corpus.files)):
        if filled >= part_rows:
            parts.append([])
            filled = 0
        parts[-1].append(index)
        filled += corpus.valid_rows(index)
    return parts


def _clear_strays(out: storage.Location, num_parts: int) -> None:
    """Remove what a crashed run left in ``out`` besides its part folders (a re-run starts clean there)."""
    keep = {f"part-{number:05d}" for number in range(num_parts)}
    if not out.fs.exists(out.path):
        out.fs.makedirs(out.path, exist_ok=True)
        return
    for path in out.fs.ls(out.path, detail=False):
        if posixpath.basename(path.rstrip("/")) not in keep:
            out.fs.rm(path, recursive=True)


def embed_or_reuse(cfg: RunConfig, out: storage.Location, corpus: Optional[ValidatedCorpus] = None, prefix: str = "") -> dict:
    """``embed_corpus`` into ``out``, or the manifest of what is already committed there (a resumed round)."""
    if storage.is_committed(out):
        logger.info("reusing committed embeddings %s", out.url)
        return storage.read_manifest(out)
    return embed_corpus(cfg, out.url, corpus, prefix)


def embeddings_manifest(cfg: RunConfig, model_path: str, rows: int, seconds: float, corpus: ValidatedCorpus) -> dict:
    spec = read_pooling_spec(model_path)
    dim = model_dim(model_path)
    return {
        "kind": "embeddings",
        "model": model_path,
        "model_hash": model_fingerprint(model_path),
        "pooling": cfg.model.pooling or spec.pooling,
        "normalize": cfg.model.normalize,
        "max_length": cfg.model.max_length or spec.max_seq_length,
        "dim": dim,
        "dtype": cfg.embed.dtype,
        "rows": rows,
        "input_rows": corpus.num_rows,
        "dropped": corpus.dropped,
        "corpus": cfg.corpus.path,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / max(seconds, 1e-9), 1),
        "hostname": os.uname().nodename,
    }
