"""Bring your own embeddings: a folder of Parquet ``id`` + ``embedding`` files stands in for the embed stage.

``embed.corpus_embeddings`` (``hardneg mine --corpus-embeddings DIR``) names the corpus vectors and,
optionally, ``embed.query_embeddings`` the queries' (``id`` = the query id); without it the model
embeds the queries, so its width must be the corpus vectors' width. ``embedding`` is a
``fixed_size_list`` (what ``hardneg embed`` writes) or a ``list`` of floats, every row as long.

At the door (``check_own_embeddings``, before Ray starts) every file is read once, ``SCAN_ROWS`` rows
at a time: both columns present, one width, no null or non-finite value, no duplicate id, the corpus
ids exactly the corpus's and every query id present. The corpus vectors' ids are compared as a sketch
(count, sum and sum of squares of their 64-bit hashes, ``id_sketch``) with the corpus's, so the door
holds nothing that grows with them; only when the sketches differ are the ids read again, to name
the ones missing, extra or repeated. In the round (``adopt_embeddings``) the stage folder
(``rounds/N/embeddings``, ``rounds/N/query_embeddings``) is committed with a manifest that lists the
user's files (``source_files``) and where they came from (``source``); nothing is copied, and every
later stage reads them through ``hardneg.search.embedding_files``.

Example::

    check_own_embeddings(cfg, check_inputs(cfg, run_dir, want_ids=True))  # returns, or raises InputError naming the file
    adopt_embeddings("vectors/corpus", here.join("embeddings"))["rows"]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hardneg import storage
from hardneg.config import RunConfig
from hardneg.errors import InputError
from hardneg.model_dir import default_model_path, model_dim

MAX_SHOWN = 3
SCAN_ROWS = 8192  # rows of an embeddings file checked at a time (the door holds one such batch: 12 MB at 384 dims)
MASK = (1 << 64) - 1


def id_sketch(hashes: np.ndarray) -> tuple[int, int, int]:
    """``(count, sum, sum of squares)`` of 64-bit id hashes, mod 2**64: the same for the same set of unique
    ids in any order or files; a missing, extra or repeated id changes it (but for a 2**-64 chance)."""
    values = np.asarray(hashes, np.uint64)
    return len(values), int(np.sum(values, dtype=np.uint64)), int(np.sum(values * values, dtype=np.uint64))


def _add(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return a[0] + b[0], (a[1] + b[1]) & MASK, (a[2] + b[2]) & MASK


@dataclass
class ScannedEmbeddings:
    """What the door learnt from a folder of embeddings: its files (URL, rows), width, the sketch of its
    ids (``id_sketch``) and, when asked for, the ids themselves."""

    source: str
    files: list[tuple[str, int]]
    ids: Optional[pa.Array]
    dim: int
    sketch: tuple[int, int, int]


def embedding_width(loc: storage.Location, column: pa.ChunkedArray | pa.Array, first_row: int = 0) -> Optional[int]:
    """The one width of an embedding column (None when it has no rows); rows are named from ``first_row``.

    Raises:
        InputError: not a list of floats, a null vector, or rows of different lengths; names the file and row.
    """
    kind = column.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)) \
            or not pa.types.is_floating(kind.value_type):
        raise InputError(f"{loc.url}: column embedding is {kind}; expected a list of floats (fixed_size_list or list)")
    if column.null_count:
        row = first_row + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{loc.url}: row {row}, column embedding: null vector")
    if len(column) == 0:
        return None
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    odd = np.flatnonzero(lengths != lengths[0])
    if len(odd):
        raise InputError(f"{loc.url}: row {first_row + int(odd[0])}, column embedding: {int(lengths[odd[0]])} values where row {first_row} has "
                         f"{int(lengths[0])}; every vector must have the same length")
    values = pc.list_flatten(column)
    if values.null_count or not pc.all(pc.is_finite(values)).as_py():
        bad = ~np.isfinite(values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(column), -1)).all(axis=1)
        raise InputError(f"{loc.url}: row {first_row + int(np.flatnonzero(bad)[0])}, column embedding: a NaN, infinite or null value")
    return int(lengths[0])


def scan_embeddings(path: str, field: str, keep_ids: bool = False) -> ScannedEmbeddings:
    """Read a folder (or file, or glob) of ``id`` + ``embedding`` Parquet once, one file at a time, checking it.

    Raises:
        InputError: no such path, a file that is not Parquet, a missing column, a bad vector, vectors of
            different widths across files, a null id, or (``keep_ids``) a duplicate id; names ``field``, the file and row.
    """
    from hardneg.corpus import hash_ids

    try:
        locations = storage.list_table_files(path)
    except InputError as err:
        raise InputError(f"{field}: {err}") from None
    files, ids, dims, sketch = [], [], {}, (0, 0, 0)
    for loc in locations:
        if not loc.path.endswith(".parquet"):
            raise InputError(f"{field}: {loc.url}: embeddings are read from Parquet files (id, embedding), not JSON lines")
        rows = 0
        for first_row, batch in _pieces(loc, field):  # SCAN_ROWS at a time: bounded memory
            width = embedding_width(loc, batch.column("embedding"), first_row=first_row)
            if width is not None:
                dims.setdefault(width, loc.url)
            if len(dims) > 1:
                (first, first_file), (second, second_file) = list(dims.items())[:2]
                raise InputError(f"{field}: {second_file} holds {second}-dim vectors but {first_file} {first}-dim ones; "
                                 "one folder holds one model's vectors")
            batch_ids = batch.column("id").combine_chunks()
            if batch_ids.null_count:
                row = first_row + int(np.flatnonzero(batch_ids.is_null().to_numpy(zero_copy_only=False))[0])
                raise InputError(f"{field}: {loc.url}: row {row}, column id: null id")
            sketch = _add(sketch, id_sketch(hash_ids(batch_ids)))
            if keep_ids:
                ids.append(batch_ids.cast(pa.string()))
            rows = first_row + batch.num_rows
        files.append((loc.url, rows))
    if not dims:
        raise InputError(f"{field}: {storage.resolve(path).url}: no vectors (every file is empty)")
    all_ids = None
    if keep_ids:
        all_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
        counts = pc.value_counts(all_ids)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
        if len(repeated):
            raise InputError(f"{field}: {storage.resolve(path).url}: id {repeated[0].as_py()!r} has more than one vector "
                             f"({len(repeated)} duplicate id(s))")
    return ScannedEmbeddings(storage.resolve(path).url, files, all_ids, next(iter(dims)), sketch)


def _pieces(loc: storage.Location, field: str):
    """``(first row, table)`` pieces of ``id`` and ``embedding`` of one embeddings file (``storage.iter_table_file``)."""
    try:
        for first_row, table in storage.iter_table_file(loc, ["id", "embedding"], SCAN_ROWS):
            missing = [c for c in ("id", "embedding") if c not in table.column_names]
            if missing:
                with loc.fs.open(loc.path, "rb") as handle:
                    names = pq.ParquetFile(handle).schema_arrow.names
                raise InputError(f"{loc.url}: no column {' or '.join(missing)}; an embeddings file holds id and "
                                 f"embedding (columns found: {', '.join(names)})")
            yield first_row, table
    except InputError as err:
        raise InputError(f"{field}: {err}") from None


def _shown(ids: pa.Array) -> str:
    return ", ".join(repr(i) for i in ids[:MAX_SHOWN].to_pylist()) + (", ..." if len(ids) > MAX_SHOWN else "")


def _not_in(ids: pa.Array, others: pa.Array) -> pa.Array:
    """The ids absent from ``others``, in order (a hash lookup: fine at millions of ids)."""
    return ids.filter(pc.invert(pc.is_in(ids, value_set=others)))


def check_own_embeddings(cfg: RunConfig, inputs) -> None:
    """The door's check of ``embed.corpus_embeddings`` / ``embed.query_embeddings`` against the inputs' ids
    (``hardneg.pipelines.inputs.InputIds``).

    Raises:
        InputError: a bad folder (``scan_embeddings``), corpus ids without a vector or vectors of ids the
            corpus lacks, a query without a vector, or widths that disagree (corpus vs query vectors, or
            corpus vectors vs the model that embeds the queries).
    """
    if cfg.embed.query_embeddings and not cfg.embed.corpus_embeddings:
        raise InputError("embed.query_embeddings is set without embed.corpus_embeddings; give the corpus vectors too "
                         "(--corpus-embeddings DIR)")
    corpus = scan_embeddings(cfg.embed.corpus_embeddings, "embed.corpus_embeddings")
    if corpus.sketch != id_sketch(inputs.corpus_hashes):
        _refuse_other_ids(scan_embeddings(cfg.embed.corpus_embeddings, "embed.corpus_embeddings", keep_ids=True), inputs.corpus_ids())
    if cfg.embed.query_embeddings:
        queries = scan_embeddings(cfg.embed.query_embeddings, "embed.query_embeddings", keep_ids=True)
        if queries.dim != corpus.dim:
            raise InputError(f"embed.query_embeddings: {queries.source} holds {queries.dim}-dim vectors but "
                             f"embed.corpus_embeddings {corpus.source} holds {corpus.dim}-dim ones")
        missing = _not_in(inputs.query_ids(), queries.ids)
        if len(missing):
            raise InputError(f"embed.query_embeddings: {queries.source}: {len(missing)} query id(s) have no vector "
                             f"({_shown(missing)})")
        return
    model_path = cfg.model.path or default_model_path()
    width = model_dim(model_path)
    if width != corpus.dim:
        raise InputError(f"embed.corpus_embeddings: {corpus.source} holds {corpus.dim}-dim vectors but the model "
                         f"{model_path}, which embeds the queries, makes {width}-dim ones; give the model that made "
                         "them (--model) or the queries' vectors too (--query-embeddings)")


def _refuse_other_ids(corpus: ScannedEmbeddings, corpus_ids: pa.Array) -> None:
    """Name the corpus ids without a vector, or the vectors of ids the corpus lacks (the sketches differed).

    Raises:
        InputError: always.
    """
    wanted = corpus_ids.cast(pa.string())
    missing = _not_in(wanted, corpus.ids)
    if len(missing):
        raise InputError(f"embed.corpus_embeddings: {corpus.source}: {len(missing)} corpus id(s) have no vector "
                         f"({_shown(missing)}); embed the whole corpus")
    extra = _not_in(corpus.ids, wanted)
    if len(extra):
        raise InputError(f"embed.corpus_embeddings: {corpus.source}: {len(extra)} id(s) are not in the corpus "
                         f"({_shown(extra)}); a negative needs its text: drop those vectors or add the rows to the corpus")
    raise InputError(f"embed.corpus_embeddings: {corpus.source}: its ids are not the corpus's (their hashes differ)")


def adopt_embeddings(source: str, out: storage.Location) -> dict:
    """Commit the stage folder ``out`` as a pointer to the user's embeddings ``source`` (read in place); its manifest."""
    from hardneg.search.files import vectors_of  # past the door: hardneg.search loads torch

    started = time.perf_counter()
    files, dim = [], None
    for loc in storage.list_table_files(source):
        with loc.fs.open(loc.path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            files.append((loc.url, parquet.metadata.num_rows))
            if dim is None and parquet.metadata.num_rows:
                dim = vectors_of(next(parquet.iter_batches(batch_size=1, columns=["embedding"])).column(0)).shape[1]
    manifest = {
        "kind": "embeddings", "source": storage.resolve(source).url, "source_files": [url for url, _ in files],
        "model": None, "model_hash": None, "dim": dim, "rows": sum(rows for _, rows in files),
        "seconds": round(time.perf_counter() - started, 3),
    }
    storage.prepare_output(out)
    storage.commit(out, manifest)
    return manifest


def adopt_or_reuse(source: str, out: storage.Location) -> dict:
    """``adopt_embeddings``, or the manifest already committed in ``out`` (a resumed round)."""
    return storage.read_manifest(out) if storage.is_committed(out) else adopt_embeddings(source, out)
