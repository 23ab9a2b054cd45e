"""Embed a corpus with Ray Data: read -> tokenize or decode images (CPU tasks) -> Encoder actors -> Parquet shards.

The driver holds neither texts nor vectors: files are read by Ray tasks, token
ids flow as Arrow blocks to a pool of Encoder actors (one GPU each when the
cluster has GPUs), and the actors' output is written by Ray as Parquet shards
with ``id`` and ``embedding`` (fixed-size list). ``MANIFEST.json`` is written
last, so a crash leaves no readable partial output. A corpus of images (``corpus.image_column``)
takes the same road: CPU tasks decode each block's images and run the model's
``AutoImageProcessor`` (``preprocess_block``); the actors get ``pixel_values``, never files.

The corpus files are grouped into parts of about ``embed.part_rows`` rows, each embedded
into ``OUTPUT/part-NNNNN/`` and committed with its own manifest. Each attempt at a part names
its shards ``a<id>_*.parquet``; it commits only if the part folder holds its own shards alone and
their rows are the rows expected, and the manifest lists them (``shards``), so a commit never
mixes two writers' files. A re-run after a driver
crash keeps the committed parts and embeds only the rest; the output's manifest counts
the rows it reused (``resumed_rows``). Rows go part by part, and readers take the shards in sorted
path order; inside a part they are not in file order (each tokenize block is sorted by length), so
readers match vectors to rows by ``id``.

With ``hardneg.ray_runtime.in_process`` (a laptop-sized round) the same steps run one block after
the other in this process (``embed_in_process``): no Ray, one Encoder, the same shards.

A round embeds its corpus and its queries in one run (``embed_corpora``): the parts of both are read
as one dataset whose rows carry ``dest`` (the part they belong to), one Encoder actor pool embeds
them, and a write task sends each row to its part's folder. So the model loads once per actor, not
once per output.

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
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

from hardneg import console, faults, storage
from hardneg.config import CorpusConfig, EmbedConfig, ModelConfig, RunConfig
from hardneg.corpus import ValidatedCorpus, validate_corpus
from hardneg.encoder import Encoder, default_model_path, max_text_tokens, model_fingerprint, read_pooling_spec
from hardneg.images import image_processor, is_image_column, preprocess_images
from hardneg.model_dir import model_dim, view_model_path
from hardneg.ray_runtime import in_process
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


def read_corpus_file(spec: dict, id_column: str, value_column: str, modality: str = "text") -> pa.Table:
    """Read one corpus file's id and text (or image) columns, minus the rows validation dropped; ``dest``: its
    output part. Texts come out as ``text`` (string); images as ``image_path`` (string) or ``image_bytes``
    (binary), the other null: one schema for every file, so Ray Data never casts paths to bytes."""
    loc = storage.Location(spec["fs"], spec["path"])
    table = storage.read_table_file(loc, [id_column, value_column])
    if len(spec["drop_rows"]):
        keep = np.ones(table.num_rows, dtype=bool)
        keep[spec["drop_rows"]] = False
        table = table.filter(pa.array(keep))
    values = table.column(value_column)
    dest = pa.array(np.full(table.num_rows, spec.get("dest", 0), np.int32))
    if modality != "image":
        return pa.table({"id": table.column(id_column), "text": values.cast(pa.string()), "dest": dest})
    paths = values.cast(pa.string()) if not is_image_column(values) else pa.nulls(table.num_rows, pa.string())
    encoded = values.cast(pa.binary()) if is_image_column(values) else pa.nulls(table.num_rows, pa.binary())
    return pa.table({"id": table.column(id_column), "image_path": paths, "image_bytes": encoded, "dest": dest})


def tokenize_block(block: pa.Table, model_path: str, max_length: int, prefixes: Sequence[str], trust_remote_code: bool) -> pa.Table:
    """Tokenize a block (CPU task) and sort it by length, so the actor's batches carry little padding.

    ``prefixes[dest]`` goes before the texts of output part ``dest`` (a query prompt, or nothing)."""
    tokenizer = _tokenizer(model_path, trust_remote_code)
    texts = block.column("text").to_pylist()
    dest = block.column("dest").to_numpy() if "dest" in block.column_names else np.zeros(len(texts), np.int32)
    if any(prefixes):
        texts = [prefixes[d] + text for d, text in zip(dest, texts)]
    token_ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    order = np.argsort([-len(ids) for ids in token_ids], kind="stable")
    return pa.table({
        "id": block.column("id").take(pa.array(order)),
        "dest": pa.array(dest[order], pa.int32()),
        "input_ids": pa.array([token_ids[i] for i in order], type=pa.list_(pa.int32())),
    })


def preprocess_block(block: pa.Table, model_path: str, trust_remote_code: bool, storage_options: dict) -> pa.Table:
    """Decode a block's images and preprocess them with the model's ``AutoImageProcessor`` (CPU task):
    ``pixel_values`` flat per row (float32) with its ``pixel_shape`` (channels, height, width)."""
    storage.restore_options(storage_options)  # s3:// images on the configured endpoint
    images = [path if path is not None else encoded
              for path, encoded in zip(block.column("image_path").to_pylist(), block.column("image_bytes").to_pylist())]
    pixels = preprocess_images(images, image_processor(model_path, trust_remote_code))
    shape = pa.array([list(pixels.shape[1:])] * len(pixels), pa.list_(pa.int32(), 3))
    flat = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), int(np.prod(pixels.shape[1:])))
    return pa.table({"id": block.column("id"), "dest": block.column("dest"), "pixel_values": flat, "pixel_shape": shape})


def block_pixels(block: pa.Table) -> np.ndarray:
    """``preprocess_block``'s pixels of a block back as float32 ``(n, channels, height, width)``."""
    shape = block.column("pixel_shape")[0].as_py()
    flat = block.column("pixel_values").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(block.num_rows, *shape)


def embedding_array(vectors: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """(n, d) numpy -> Arrow fixed_size_list<float16|float32>[d]."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.dtype(dtype)).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


class EncoderActor:
    """A Ray Data callable class: token-id (or pixel) blocks in, ``id`` + ``embedding`` blocks out."""

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
        if "pixel_values" in block.column_names:
            vectors = self.encoder.encode_pixels(block_pixels(block), batch_size=self.batch_size, autocast=self.autocast)
        else:
            token_lists = block.column("input_ids").to_pylist()
            vectors = self.encoder.encode_tokens(token_lists, batch_size=self.batch_size, autocast=self.autocast)
        faults.point("embed.block", rows=block.num_rows)
        return pa.table({"id": block.column("id"), "dest": block.column("dest"), "embedding": embedding_array(vectors, self.dtype)})


def embed_tables(ds, model: ModelConfig, embed: EmbedConfig, model_path: str, prefixes: Sequence[str] = ("",),
                 modality: str = "text"):
    """Ray Dataset of (id, text, dest), or (id, image_path, image_bytes, dest) for ``modality="image"``, -> Ray Dataset of
    (id, dest, embedding). Lazy; nothing runs yet."""
    import ray

    plan = plan_actors(embed)
    logger.info("embedding with %d Encoder actor(s), %.0f GPU and %d torch thread(s) each", plan.num_actors, plan.gpus_per_actor, plan.torch_threads)
    prepare, fn_kwargs, block_size = block_step(model, embed, model_path, prefixes, modality)
    tokens = ds.map_batches(prepare, batch_size=block_size, batch_format="pyarrow", fn_kwargs=fn_kwargs, num_cpus=1)
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


def block_step(model: ModelConfig, embed: EmbedConfig, model_path: str, prefixes: Sequence[str], modality: str) -> tuple:
    """What turns a block of read rows into the Encoder's input: ``(tokenize_block or preprocess_block, its
    keyword arguments, rows per block)``."""
    if modality == "image":
        return preprocess_block, {"model_path": model_path, "trust_remote_code": model.trust_remote_code,
                                  "storage_options": storage.s3_options()}, embed.image_block_size
    return tokenize_block, {"model_path": model_path, "max_length": max_text_tokens(model_path, model.max_length),
                            "prefixes": list(prefixes), "trust_remote_code": model.trust_remote_code}, embed.block_size


def file_specs(corpora: Sequence[ValidatedCorpus], id_column: Sequence[str], value_column: Sequence[str]) -> list[dict]:
    """One ``read_corpus_file`` spec per validated file; ``dest`` is the index in ``corpora``, ``value_column[dest]`` the column read."""
    return [{"fs": loc.fs, "path": loc.path, "drop_rows": rows, "dest": dest, "id": id_column[dest], "value": value_column[dest],
             "modality": corpus.modality}
            for dest, corpus in enumerate(corpora) for loc, rows in zip(corpus.files, corpus.drop_rows)]


def corpus_dataset(corpora: Sequence[ValidatedCorpus], id_column: Sequence[str], value_column: Sequence[str]):
    """A Ray Dataset of (id, text, dest), or (id, image_path, image_bytes, dest) for corpora of images, one read task per validated
    file; ``dest`` is the index in ``corpora``, ``value_column[dest]`` the column read."""
    import ray

    specs = file_specs(corpora, id_column, value_column)

    def read(batch: dict) -> pa.Table:
        spec = specs[int(batch["file"][0])]
        return read_corpus_file(spec, spec["id"], spec["value"], spec["modality"])

    files = ray.data.from_items([{"file": index} for index in range(len(specs))], override_num_blocks=len(specs))
    # Half a CPU: reading is I/O, and a different CPU request keeps Ray Data from fusing it with tokenizing,
    # whose tasks would otherwise take block_size *files* each instead of block_size texts.
    return files.map_batches(read, batch_size=1, batch_format="numpy", num_cpus=0.5)


def write_block(block: pa.Table, part_urls: Sequence[str], attempt: str, storage_options: dict) -> pa.Table:
    """Write a block's rows to their output parts (``part_urls[dest]``) as ``{attempt}_*.parquet``; (dest, rows) back."""
    storage.restore_options(storage_options)
    dest = block.column("dest").to_numpy() if "dest" in block.column_names else np.zeros(block.num_rows, np.int32)
    written = []
    for part in np.unique(dest):
        rows = block.filter(pa.array(dest == part)).select(["id", "embedding"])
        storage.write_parquet(rows, storage.resolve(part_urls[part]).join(f"{attempt}_{uuid.uuid4().hex[:12]}.parquet"))
        written.append((int(part), rows.num_rows))
    return pa.table({"dest": pa.array([d for d, _ in written], pa.int32()), "rows": pa.array([n for _, n in written], pa.int64())})


def write_embeddings(ds, outs: storage.Location | Sequence[storage.Location], attempt: str) -> tuple[int, list[str]] | list:
    """Write the (id, embedding[, dest]) dataset as Parquet shards ``{attempt}_*.parquet``: row ``dest`` into ``outs[dest]``.

    Returns:
        per output (one output: not in a list): (rows written, shard names), counted from this attempt's own shards.

    Raises:
        StorageError: an output also holds shards this attempt did not write (another writer).
    """
    single = isinstance(outs, storage.Location)
    outs = [outs] if single else list(outs)
    ds.map_batches(write_block, batch_size=None, batch_format="pyarrow", num_cpus=0.5,
                   fn_kwargs={"part_urls": [out.url for out in outs], "attempt": attempt, "storage_options": storage.s3_options()}
                   ).materialize()
    results = attempt_shards(outs, attempt)
    return results[0] if single else results


def attempt_shards(outs: Sequence[storage.Location], attempt: str) -> list[tuple[int, list[str]]]:
    """Per output: (rows written, shard names) of attempt ``attempt``'s own shards.

    Raises:
        StorageError: an output also holds shards this attempt did not write (another writer).
    """
    results = []
    for out in outs:
        shards = shard_rows(out)
        foreign = sorted(name for name in shards if not name.startswith(f"{attempt}_"))
        if foreign:
            raise storage.StorageError(f"{out.url} holds shards this writer did not write ({', '.join(foreign[:3])}): "
                                       "another writer is writing into it; not committed")
        results.append((sum(shards.values()), sorted(shards)))
    return results


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


@dataclass
class EmbedTarget:
    """One output folder of an embed run: the corpus that fills it and the prefix before its texts."""

    output: str
    corpus_cfg: CorpusConfig
    corpus: Optional[ValidatedCorpus] = None
    prefix: str = ""
    view: bool = False  # a cross-view corpus's second view: embedded by the model's view encoder (``view_model_path``)


@dataclass
class _Part:
    target: int
    part_dir: storage.Location
    corpus: ValidatedCorpus
    expected: int
    urls: list


def embed_corpus(cfg: RunConfig, output: str, corpus: Optional[ValidatedCorpus] = None, prefix: str = "") -> dict:
    """Validate, embed and commit a corpus into ``output`` (resuming its committed parts). Returns the manifest.

    ``prefix`` goes before every text (a query prompt such as ``"query: "``).

    Raises:
        InputError: the corpus is invalid (nothing is written).
        StorageError: ``output`` is already committed.
    """
    return embed_corpora(cfg, [EmbedTarget(output, cfg.corpus, corpus, prefix)])[0]


def embed_corpora(cfg: RunConfig, targets: Sequence[EmbedTarget]) -> list[dict]:
    """Embed several corpora (a round's corpus and its queries) with one model in as few Ray Data runs as fit:
    parts still to embed are packed into runs of at most ``embed.part_rows`` rows, so a laptop-sized round
    starts one Encoder actor pool (one model load per actor) for corpus and queries together. Each part
    commits on its own; each target commits its manifest. Returns the manifests, in ``targets`` order.

    Raises:
        InputError: a corpus is invalid (nothing is written).
        StorageError: an output is already committed.
    """
    started = time.perf_counter()
    outs = [storage.resolve(target.output) for target in targets]
    for out in outs:
        if storage.is_committed(out):
            raise storage.StorageError(f"{out.url} is already committed; choose a new output path")
    corpora = [target.corpus or validate_corpus(target.corpus_cfg) for target in targets]
    model_path = cfg.model.path or default_model_path()
    pending, resumed, num_parts = _pending_parts(cfg, outs, corpora)
    runs: list[list[_Part]] = []
    for part in sorted(pending, key=lambda p: p.corpus.modality):  # a run embeds texts or images, not both
        if (not runs or sum(p.expected for p in runs[-1]) + part.expected > cfg.embed.part_rows
                or runs[-1][0].corpus.modality != part.corpus.modality):
            runs.append([])
        runs[-1].append(part)
    for number, run in enumerate(runs):
        _embed_run(cfg, targets, model_path, run, f"embed {', '.join(sorted({posixpath.basename(outs[p.target].path) for p in run}))}"
                   + (f" run {number + 1}/{len(runs)}" if len(runs) > 1 else ""))
    seconds = time.perf_counter() - started
    manifests = []
    for t, (target, out, corpus) in enumerate(zip(targets, outs, corpora)):
        rows = sum(corpus.valid_rows(i) for i in range(len(corpus.files)))
        if resumed[t]:
            logger.info("%s resumed: %d of %d rows were already embedded in committed parts", out.url, resumed[t], rows)
        manifest = embeddings_manifest(cfg.model_copy(update={"corpus": target.corpus_cfg}), model_path, rows, seconds, corpus)
        manifest.update(parts=num_parts[t], resumed_rows=resumed[t], embedded_with=[o.url for o in outs if o is not out])
        storage.commit(out, manifest)
        manifests.append(manifest)
    return manifests


def _pending_parts(cfg: RunConfig, outs: list, corpora: list) -> tuple[list[_Part], list[int], list[int]]:
    """The parts still to embed (their folders cleared), the rows resumed from committed parts and the parts per output."""
    pending, resumed, num_parts = [], [0] * len(outs), []
    for t, (out, corpus) in enumerate(zip(outs, corpora)):
        parts = split_parts(corpus, cfg.embed.part_rows)
        num_parts.append(len(parts))
        _clear_strays(out, len(parts))
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
                resumed[t] += expected
                continue
            storage.prepare_output(part_dir)
            pending.append(_Part(t, part_dir, corpus.subset(files), expected, urls))
    return pending, resumed, num_parts


def _embed_run(cfg: RunConfig, targets: Sequence[EmbedTarget], model_path: str, run: list[_Part], name: str) -> None:
    """One Ray Data run over ``run``'s parts (one actor pool), or its steps in this process (``in_process``);
    each part written to its folder and committed."""
    corpora = [p.corpus for p in run]
    id_columns = [targets[p.target].corpus_cfg.id_column for p in run]
    value_columns = [p.corpus.value_column(targets[p.target].corpus_cfg) for p in run]
    prefixes = [targets[p.target].prefix for p in run]
    attempt, outs = f"a{uuid.uuid4().hex[:12]}", [p.part_dir for p in run]
    with console.stage(name, rows=sum(p.expected for p in run)):
        if in_process():
            embed_in_process(cfg, model_path, file_specs(corpora, id_columns, value_columns), prefixes, outs, attempt)
            written = attempt_shards(outs, attempt)
        else:
            ds = embed_tables(corpus_dataset(corpora, id_columns, value_columns), cfg.model, cfg.embed, model_path, prefixes,
                              run[0].corpus.modality)
            written = write_embeddings(ds, outs, attempt)
    for part, (rows, shards) in zip(run, written):
        if rows != part.expected:
            raise storage.StorageError(f"{part.part_dir.url}: wrote {rows} rows, expected {part.expected}; not committed")
        storage.commit(part.part_dir, {"kind": "embeddings-part", "files": part.urls, "rows": rows, "shards": shards})


def embed_in_process(cfg: RunConfig, model_path: str, specs: list[dict], prefixes: Sequence[str], outs: Sequence[storage.Location],
                     attempt: str) -> None:
    """The Ray run's steps one block after the other in this process: read a file, tokenize (or decode) a block,
    encode it with one ``EncoderActor``, write it (``write_block``)."""
    modality = specs[0]["modality"] if specs else "text"
    prepare, fn_kwargs, block_size = block_step(cfg.model, cfg.embed, model_path, prefixes, modality)
    encoder = EncoderActor(cfg.model, cfg.embed, model_path, torch_threads=os.cpu_count() or 1)
    urls = [out.url for out in outs]
    for spec in specs:
        table = read_corpus_file(spec, spec["id"], spec["value"], spec["modality"])
        for start in range(0, table.num_rows, block_size):
            write_block(encoder(prepare(table.slice(start, block_size), **fn_kwargs)), urls, attempt, storage.s3_options())


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


def embed_or_reuse(cfg: RunConfig, targets: Sequence[EmbedTarget]) -> list[dict]:
    """``embed_corpora`` into the targets not yet committed (one run for them all), the committed ones' manifests
    as they are (a resumed round); in ``targets`` order."""
    manifests: list[Optional[dict]] = []
    for target in targets:
        out = storage.resolve(target.output)
        manifests.append(storage.read_manifest(out) if storage.is_committed(out) else None)
        if manifests[-1] is not None:
            logger.info("reusing committed embeddings %s", out.url)
    todo = [target for target, manifest in zip(targets, manifests) if manifest is None]
    # One run per model: the second views of a checkpoint trained with separate view weights have their own.
    model_path = cfg.model.path or default_model_path()
    by_model: dict[str, list[EmbedTarget]] = {}
    for target in todo:
        by_model.setdefault(view_model_path(model_path) if target.view else model_path, []).append(target)
    made = {}
    for path, group in by_model.items():
        run_cfg = cfg if path == model_path else cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": path})})
        made.update(zip((target.output for target in group), embed_corpora(run_cfg, group)))
    return [manifest if manifest is not None else made[target.output] for target, manifest in zip(targets, manifests)]


def embeddings_manifest(cfg: RunConfig, model_path: str, rows: int, seconds: float, corpus: ValidatedCorpus) -> dict:
    spec = read_pooling_spec(model_path)
    dim = model_dim(model_path)
    return {
        "kind": "embeddings",
        "model": model_path,
        "model_hash": model_fingerprint(model_path),
        "modality": corpus.modality,
        # images: pooler_output, or the mean of last_hidden_state (hardneg.encoder.image_pool)
        "pooling": "image_pool" if corpus.modality == "image" else cfg.model.pooling or spec.pooling,
        "normalize": cfg.model.normalize,
        "max_length": max_text_tokens(model_path, cfg.model.max_length),
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
