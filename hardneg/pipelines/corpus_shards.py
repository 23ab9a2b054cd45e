"""The corpus as the mine stage sees it: one ``CorpusShard`` per index shard, and ``ShardSet`` over them.

A shard holds its part of the round's index and what the stage looks up by its rows: ids, texts,
text hashes, group hashes and (unless its exact index already holds them) the vectors. Its rows are
the embedding files its index was built from, in global-row order (global row = shard offset + local
row). Its texts and groups are read from the corpus files its rows were embedded from (``embedded_from``: the
embed parts' manifests list them), keeping only its own ids, so with several shards no process holds, or
reads, the whole corpus.

``ShardSet`` fans a batch out to the shards (in-process ``CorpusShard`` objects, or Ray actors of
them) and merges: the merged search equals the unsharded one, scores and rows (ties by lower row).

Example::

    index_dir = "runs/a/rounds/00000/index"
    kwargs, starts = corpus_shard_kwargs(cfg.index, corpus, corpus_cfg, "runs/a/rounds/00000/embeddings", index_dir,
                                         index_manifest(index_dir))
    with open_shards(CorpusShard, kwargs, cfg.index.device, in_process=False) as actors:
        scores, rows = ShardSet(actors, starts).search(query_vectors, k=50)
"""

from __future__ import annotations

import posixpath
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from hardneg import storage
from hardneg.config import CorpusConfig, IndexConfig
from hardneg.corpus import ValidatedCorpus, group_codes
from hardneg.errors import StorageError
from hardneg.miners import hash_texts
from hardneg.pipelines.inputs import load_corpus
from hardneg.search import ExactIndex, FaissIndex, build_index, embedding_files, read_embeddings
from hardneg.search.sharded import ShardActor, merge_shards

def shard_files(files: list[tuple[str, int]], shard: dict) -> list[tuple[str, int]]:
    """The embedding files of an index shard (``{"offset", "rows"}``): those whose rows start inside it."""
    out, start = [], 0
    for url, rows in files:
        if shard["offset"] <= start < shard["offset"] + shard["rows"]:
            out.append((url, rows))
        start += rows
    return out


def stored_vectors(index) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """``rows -> float32 vectors`` read back from an index that stores them exactly (exact; faiss flat, HNSW,
    IVF-Flat on the CPU), so a shard need not hold a second copy; None for IVF-PQ (lossy) and GPU faiss."""
    if isinstance(index, ExactIndex):
        return lambda rows: index.corpus[rows].float().cpu().numpy()
    if isinstance(index, FaissIndex) and index.backend in ("flat", "hnsw", "ivf") and "Gpu" not in type(index.index).__name__:
        import faiss

        if index.backend == "ivf":
            faiss.extract_index_ivf(index.index).make_direct_map()
        return lambda rows: index.index.reconstruct_batch(np.ascontiguousarray(rows, np.int64))
    return None


def embedded_from(corpus: ValidatedCorpus, files: list[tuple[str, int]]) -> ValidatedCorpus:
    """The corpus files that embedding ``files`` were embedded from: each embed part's manifest lists its
    corpus files, so a shard reads its own parts' files, not the whole corpus. The whole corpus when an
    embedding file has no part manifest (a user's own embeddings) or names a file the corpus lacks."""
    wanted: set[str] = set()
    parts = {posixpath.dirname(storage.resolve(url).url) for url, _ in files}  # a part holds many embedding files
    for part_url in parts:
        part = storage.resolve(part_url)
        listed = storage.read_manifest(part).get("files") if storage.is_committed(part) else None
        if listed is None:
            return corpus
        wanted.update(listed)
    indices = [i for i, loc in enumerate(corpus.files) if loc.url in wanted]
    return corpus.subset(indices) if len(indices) == len(wanted) else corpus


class CorpusShard(ShardActor):
    """One index shard plus the ids, texts, text and group hashes (and vectors) of its rows.

    Every method takes and returns global rows; a row another shard owns must not be asked for.
    """

    def __init__(self, index_dir: str, shard: dict, cfg: IndexConfig, storage_options: dict, files: list[tuple[str, int]],
                 corpus: ValidatedCorpus, corpus_cfg: CorpusConfig):
        storage.restore_options(storage_options)
        ids, vectors = read_embeddings("", files)
        if cfg.backend == "exact":  # the index is the vectors: build it from them rather than hold them twice
            self.index, self.offset = build_index(vectors, cfg), shard["offset"]
        else:
            super().__init__(index_dir, shard, cfg, storage_options)
        self.read_back = stored_vectors(self.index)
        self.vectors = None if self.read_back else vectors  # only an index that keeps no exact copy (IVF-PQ, GPU)
        del vectors
        self.ids = pa.array(ids, pa.string())
        self.row_of = pd.Index(ids)
        table = load_corpus(corpus, corpus_cfg, self.ids)
        order = pd.Index(table.column("id").to_numpy(zero_copy_only=False)).get_indexer(ids)
        if (order < 0).any():
            raise StorageError(f"{files[0][0] if files else index_dir}: {int((order < 0).sum())} embedded ids are not in the corpus "
                               "(the corpus changed after it was embedded); re-embed")
        table = table.take(pa.array(order))
        self.texts = table.column("text").combine_chunks()
        self.text_hash = hash_texts(self.texts.to_pylist())
        groups = table.column("group").combine_chunks() if "group" in table.column_names else None
        self.groups = group_codes(groups, table.num_rows)

    def find(self, ids: np.ndarray) -> np.ndarray:
        """The global row of each id (``-1``: not in this shard)."""
        local = self.row_of.get_indexer(pd.Index(ids))
        return np.where(local >= 0, local + self.offset, -1)

    def facts(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(text hashes, group keys, float32 vectors)`` of this shard's ``rows``."""
        local = np.asarray(rows, np.int64) - self.offset
        vectors = self.read_back(local) if self.read_back else self.vectors[local]
        return self.text_hash[local], self.groups[local], vectors

    def texts_of(self, rows: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """``(ids, texts)`` of this shard's ``rows``."""
        take = pa.array(np.asarray(rows, np.int64) - self.offset)
        return self.ids.take(take), self.texts.take(take)


class ShardSet:
    """A batch's calls fanned out to every shard (objects in this process, or their Ray actors) and merged."""

    def __init__(self, shards: Sequence, starts: Sequence[int]):
        self.shards = list(shards)
        self.starts = np.asarray(starts, np.int64)
        self.remote = not isinstance(self.shards[0], ShardActor)  # CorpusShard, PlaceShard objects; else their actors

    def _call(self, name: str, calls: Sequence[tuple[int, tuple]]) -> list:
        """``name(*args)`` of shard ``s`` for each ``(s, args)``: direct calls, or Ray calls gathered at once."""
        if not self.remote:
            return [getattr(self.shards[s], name)(*args) for s, args in calls]
        from hardneg.ray_runtime import get

        return get([getattr(self.shards[s], name).remote(*args) for s, args in calls])

    def _everywhere(self, name: str, *args) -> list:
        return self._call(name, [(s, args) for s in range(len(self.shards))])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` of the ``k`` best corpus rows per query, over every shard."""
        return self._merged("search", queries, k)

    def similar(self, queries: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` of the ``k`` best places by embedding similarity (``PlaceShard.similar``), over every shard."""
        return self._merged("similar", queries, k, exact)

    def _merged(self, name: str, queries: np.ndarray, k: int, *args) -> tuple[np.ndarray, np.ndarray]:
        """Every shard's ``name(queries, k, *args)`` top ``k``, merged."""
        queries = np.ascontiguousarray(queries, np.float64 if queries.dtype == np.float64 else np.float32)  # a k-d tree keeps float64
        if self.remote and len(self.shards) > 1:  # one copy in the object store, not one per shard call (as ShardedIndex)
            import ray

            queries = ray.put(queries)
        parts = self._everywhere(name, queries, k, *args)
        return parts[0] if len(parts) == 1 else merge_shards(parts, k)

    def ntotal(self) -> int:
        """Rows in every shard."""
        return int(sum(self._everywhere("ntotal")))

    def find(self, ids: np.ndarray) -> np.ndarray:
        """The global row of each id (``-1``: in no shard)."""
        return np.max(np.stack(self._everywhere("find", ids)), axis=0)

    def _routed(self, name: str, rows: np.ndarray) -> list[tuple[np.ndarray, tuple]]:
        """``name`` asked of each shard for its own ``rows``: ``[(positions in rows, answer), ...]``."""
        owner = np.searchsorted(self.starts, rows, side="right") - 1
        picks = {s: np.flatnonzero(owner == s) for s in range(len(self.shards))}
        asked = [s for s, pick in picks.items() if len(pick)]
        answers = self._call(name, [(s, (rows[picks[s]],)) for s in asked])
        return [(picks[s], answer) for s, answer in zip(asked, answers)]

    def gather(self, name: str, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """The arrays a shard method ``name(rows)`` returns (one value per row each: ``facts``, ``place_facts``,
        ...), asked of each shard for its own ``rows`` and put back in their order."""
        answers = self._routed(name, rows)
        if not answers:  # no rows: the first shard's empty answer has the shapes and types
            return self._call(name, [(0, (rows,))])[0]
        if len(answers) == 1:  # one shard holds them all: its answer is in their order
            return answers[0][1]
        outs = [np.zeros((len(rows),) + part.shape[1:], part.dtype) for part in answers[0][1]]
        for at, parts in answers:
            for out, part in zip(outs, parts):
                out[at] = part
        return tuple(outs)

    def texts_of(self, rows: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """``(ids, texts)`` of global ``rows``, in their order."""
        if not len(rows):
            return pa.array([], pa.string()), pa.array([], pa.string())
        answers = self._routed("texts_of", rows)
        if len(answers) == 1:  # one shard holds them all: its answer is in their order
            return answers[0][1]
        at = np.concatenate([pick for pick, _ in answers])
        back = pa.array(np.argsort(at, kind="stable"))
        ids = pa.concat_arrays([a[0] for _, a in answers]).take(back)
        texts = pa.concat_arrays([a[1] for _, a in answers]).take(back)
        return ids, texts


def corpus_shard_kwargs(index_cfg: IndexConfig, corpus: ValidatedCorpus, corpus_cfg: CorpusConfig, embeddings_dir: str,
                        index_dir: str, manifest: dict) -> tuple[list[dict], list[int]]:
    """The ``CorpusShard`` constructor kwargs of each shard of the committed index ``index_dir`` (``manifest``: its
    manifest), and the shards' first global rows."""
    cfg = index_cfg.model_copy(update={"backend": manifest["backend"]})
    files = embedding_files(embeddings_dir)
    kwargs = []
    for shard in manifest["shards"]:
        own = shard_files(files, shard)
        kwargs.append({"index_dir": index_dir, "shard": shard, "cfg": cfg, "storage_options": storage.s3_options(),
                       "files": own, "corpus": embedded_from(corpus, own), "corpus_cfg": corpus_cfg})
    return kwargs, [shard["offset"] for shard in manifest["shards"]]


@contextmanager
def open_shards(shard_class: type, kwargs: list[dict], device: str, in_process: bool) -> Iterator[list]:
    """One Ray actor of ``shard_class`` per entry of ``kwargs``, killed on exit; none (``[]``) with ``in_process``
    (one shard, mined by one actor, or a round run in process): the caller builds the shards where it runs."""
    if in_process:
        yield []
        return
    import ray

    from hardneg.resources import cluster_resources, shard_resources

    # One shard's share more than there are shards: the MineActors that call them need CPUs too.
    cluster = cluster_resources()
    cpus, gpus = shard_resources(len(kwargs) + 1, cluster, device)[0], shard_resources(len(kwargs), cluster, device)[1]
    actor = ray.remote(shard_class).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=-1)
    actors = [actor.remote(**kw) for kw in kwargs]
    try:
        yield actors
    finally:
        for a in actors:
            ray.kill(a)
