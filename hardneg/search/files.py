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
    out = []
    for file in sorted(storage.list_table_files(embeddings_dir), key=lambda f: f.path):
        with file.fs.open(file.path, "rb") as handle:
            out.append((file.url, pq.ParquetFile(handle).metadata.num_rows))
    expected = storage.read_manifest(loc).get("rows")
    if expected is not None and sum(rows for _, rows in out) != expected:
        raise StorageError(f"{loc.url}: its shards hold {sum(rows for _, rows in out)} rows but its MANIFEST.json "
                           f"says {expected}: it was written to by more than one writer; delete it and run again")
    return out


def vectors_of(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A ``fixed_size_list<float16|float32>[d]`` column as a float32 ``(n, d)`` array, without a Python loop."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return np.zeros((0, array.type.list_size), np.float32)
    values = array.values.to_numpy(zero_copy_only=False)
    return values.reshape(len(array), array.type.list_size).astype(np.float32, copy=False)


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
