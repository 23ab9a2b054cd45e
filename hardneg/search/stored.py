"""A persisted index: one file per shard in a committed folder (``rounds/NNNNN/index/``).

``MANIFEST.json`` names the backend, the dimension, the rows and, for every shard, its file, its
first global row and its row count. A faiss shard is ``faiss.serialize_index`` bytes
(``shard-NNNNN.faiss``); an exact or k-d tree shard is its float32 vectors (``shard-NNNNN.npy``).
One shard opens in-process; several open as Ray actors, each loading its own file
(``ShardedIndex``).

Example::

    with open_index("runs/a/rounds/00000/index", IndexConfig()) as index:
        scores, rows = index.search(query_vectors, k=50)
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

from hardneg import storage
from hardneg.config import IndexConfig
from hardneg.errors import StorageError
from hardneg.search.base import Index
from hardneg.search.build import build_index, load_index
from hardneg.search.files import read_embeddings
from hardneg.search.sharded import ShardedIndex


def shard_name(shard: int, backend: str) -> str:
    """The file of shard ``shard``: ``.npy`` vectors for exact/kdtree, a serialized faiss index otherwise."""
    return f"shard-{shard:05d}." + ("npy" if backend in ("exact", "kdtree") else "faiss")


def write_shard(files: list[tuple[str, int]], cfg: IndexConfig, out_url: str, storage_options: dict) -> int:
    """Build the index over the rows of ``files`` and write it to ``out_url``; returns its row count."""
    storage.restore_options(storage_options)
    return write_vectors(lambda: read_embeddings("", files)[1], cfg, out_url)


def write_vectors(load: Callable[[], np.ndarray], cfg: IndexConfig, out_url: str) -> int:
    """Build the index over the vectors ``load()`` returns (one shard, in its row order) and write it to
    ``out_url``; returns its row count."""
    vectors = load()
    rows = len(vectors)
    if cfg.backend in ("exact", "kdtree"):  # the vectors themselves: nothing to train, and no fp16 round trip
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(vectors, np.float32), allow_pickle=False)
        data = buffer.getvalue()
    else:
        index = build_index(vectors, cfg)
        del vectors  # the index holds its own copy: do not keep a third one while it serializes
        data = index.to_bytes()
        del index
    storage.write_bytes(storage.resolve(out_url), data)
    return rows


def index_manifest(index_dir: str) -> dict:
    """The manifest of a committed index folder.

    Raises:
        StorageError: the folder is not committed (run the index stage first).
    """
    loc = storage.resolve(index_dir)
    if not storage.is_committed(loc):
        raise StorageError(f"{loc.url} is not a committed index folder (no MANIFEST.json); run the index stage first")
    manifest = storage.read_manifest(loc)
    if "shards" not in manifest:
        raise StorageError(f"{loc.url} holds no index files (an index folder of an older hardneg); delete it to rebuild")
    return manifest


def read_shard(index_dir: str, shard: dict, cfg: IndexConfig) -> Index:
    """Shard ``shard`` (an entry of the manifest's ``shards``) loaded in this process."""
    return load_index(storage.read_bytes(storage.resolve(index_dir).join(shard["file"])), cfg)


def open_index(index_dir: str, cfg: IndexConfig) -> Index:
    """The committed index folder ``index_dir`` opened for search: in-process for one shard, Ray actors for several.

    ``cfg`` gives the search-time settings (device, chunk and batch sizes); the backend is the one
    the folder was built with.
    """
    manifest = index_manifest(index_dir)
    cfg = cfg.model_copy(update={"backend": manifest["backend"]})
    if len(manifest["shards"]) == 1:
        return read_shard(index_dir, manifest["shards"][0], cfg)
    return ShardedIndex(index_dir, manifest["shards"], cfg)

