"""Reading a committed embed output (``id`` + ``embedding`` Parquet shards) in a stable row order.

Global row ``r`` of a corpus is row ``r - offset`` of the file that holds it, files taken in
sorted name order. Every backend and the miner share this numbering.

Example::

    files = embedding_files("runs/a/rounds/00000/embeddings")   # [(url, rows), ...]
    ids, vectors = read_embeddings("runs/a/rounds/00000/embeddings")
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hardneg import storage
from hardneg.errors import StorageError


def embedding_files(embeddings_dir: str) -> list[tuple[str, int]]:
    """``(file URL, rows)`` of a committed embeddings folder, in global-row order.

    Raises:
        StorageError: the folder has no MANIFEST.json (it is not, or not yet, a whole output), or its
            shards hold other rows than the manifest counts (never read a folder two writers wrote to).
    """
    loc = storage.resolve(embeddings_dir)
    if not storage.is_committed(loc):
        raise StorageError(f"{loc.url} is not a committed embeddings folder (no MANIFEST.json); run the embed stage first")
    manifest = storage.read_manifest(loc)
    if "source_files" in manifest:  # a user's own embeddings, adopted in place (hardneg.pipelines.own_embeddings)
        files = [storage.resolve(url) for url in manifest["source_files"]]
    else:
        files = sorted(storage.list_table_files(embeddings_dir), key=lambda f: f.path)
    out = []
    for file in files:
        with file.fs.open(file.path, "rb") as handle:
            out.append((file.url, pq.ParquetFile(handle).metadata.num_rows))
    expected = manifest.get("rows")
    if expected is not None and sum(rows for _, rows in out) != expected:
        if "source_files" in manifest:
            raise StorageError(f"{manifest['source']}: its files hold {sum(rows for _, rows in out)} rows but {loc.url}/MANIFEST.json "
                               f"adopted {expected}: the embeddings changed after the round took them; use a new run_dir")
        raise StorageError(f"{loc.url}: its shards hold {sum(rows for _, rows in out)} rows but its MANIFEST.json "
                           f"says {expected}: it was written to by more than one writer; delete it and run again")
    return out


def vectors_of(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An embedding column as a float32 ``(n, d)`` array, without a Python loop: ``fixed_size_list[d]`` (what
    ``hardneg embed`` writes) or ``list`` / ``large_list`` of floats all ``d`` long (a user's own files)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(array.type):
        dim = array.type.list_size
    else:
        dim = int(pc.list_value_length(array[:1])[0].as_py()) if len(array) else 0
    values = array.flatten().to_numpy(zero_copy_only=False)
    if len(values) != len(array) * dim:
        raise StorageError(f"embedding lists of different lengths ({len(values)} values in {len(array)} rows)")
    return values.reshape(len(array), dim).astype(np.float32, copy=False)


def read_embeddings(embeddings_dir: str, files: Optional[list[tuple[str, int]]] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)`` of ``files`` (all files of ``embeddings_dir`` when None), ids as strings."""
    files = embedding_files(embeddings_dir) if files is None else files
    ids, vectors = [], []
    for url, _ in files:
        table = storage.read_table_file(storage.resolve(url), ["id", "embedding"])
        ids.append(table.column("id").cast(pa.string()).to_numpy(zero_copy_only=False))
        vectors.append(vectors_of(table.column("embedding")))
    if not vectors:
        return np.zeros(0, object), np.zeros((0, 0), np.float32)
    return np.concatenate(ids), np.concatenate(vectors)
