"""The places as the mine stage sees them: the round's ``places/`` folder, ``PlaceShard``s over it, and the
geographic miner's task (``mine_place_file``).

A round over places writes its places once, checked and written one corpus file at a time (``write_places``:
``id``, the first view, ``view`` in a cross-view corpus, ``lat``, ``lon``, ``group_code``) in parts of at most
``index.query_batch_size`` rows, the mine stage's tasks. Each ``PlaceShard`` reads a contiguous range of the
places (from the files that hold them) and holds their search index over 3-D unit vectors
(``hardneg.miners.unit_vectors``) plus what the miner and the written rows look up by row: coordinates, group
codes, ids and values. A task reads its own file, runs ``geographic_negatives`` with the candidates'
coordinates served by the shards, writes its rows and returns its figures (``Tally.result``: bounded
whatever the file's size); with ``mine.batches`` it also returns its negatives' rows, which the driver
keeps as the ``(places, num_negatives)`` pool the batch stage walks (docs/scaling.md: what stays global).

Example::

    here = storage.resolve("runs/g/rounds/00000")
    n = write_places(cfg, here)["rows"]
    shard = PlaceShard(place_files(here), {"offset": 0, "rows": n}, IndexConfig(backend="kdtree"), {})
"""

from __future__ import annotations

import io
import time
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from hardneg import storage
from hardneg.config import IndexConfig, RunConfig
from hardneg.errors import StorageError
from hardneg.miners import GEO_REMOVED, geographic_negatives, hash_texts, unit_vectors
from hardneg.miners.geo import FLOAT32_SCORE_ERROR
from hardneg.pipelines.figures import Tally, per_query_histogram
from hardneg.places import prepare_places, value_name
from hardneg.search import build_index, embedding_files, index_manifest, read_embeddings
from hardneg.search.build import load_index
from hardneg.search.stored import write_vectors
from hardneg.search.sharded import ShardActor


def write_places(cfg: RunConfig, here: storage.Location, holdout: bool = False, train: bool = True) -> dict:
    """The places stage: check the places corpus file by file and commit its valid places as ``here/places/``
    (parts of at most ``index.query_batch_size`` rows, the mine stage's tasks; ``prepare_places``); returns
    its manifest (read back when committed: a resumed round). ``holdout``: a cross-view corpus's held-out
    places (``heldout.split_places``) go to ``here/heldout/places/`` instead, through ``here/places-staging/``
    (removed after; a corpus that is not cross-view has none, and its staged parts are moved to ``places/``);
    with ``train`` False only they are written, and ``heldout/places``' manifest is returned.
    A mixed round's views are checked as texts too (``texts``): they are embedded."""
    from hardneg.pipelines.heldout import split_places

    places_dir, heldout_dir = here.join("places"), here.join("heldout", "places")
    done = places_dir if train else heldout_dir
    if storage.is_committed(done):
        return storage.read_manifest(done)
    rows_per_file, texts = cfg.index.query_batch_size, cfg.mine.miner == "mixed"
    staging = here.join("places-staging") if holdout else places_dir
    files = prepare_places(cfg.corpus, storage.prepare_output(staging), rows_per_file, texts)
    about = {"rows_per_file": rows_per_file, "cross_view": files.cross_view, "values": files.values, "view_values": files.view_values}
    heldout = None
    if holdout:
        if heldout_dir.fs.exists(heldout_dir.path):  # an earlier try's, committed before it died: split again
            heldout_dir.fs.rm(heldout_dir.path, recursive=True)
        if files.cross_view:
            _, heldout = split_places(staging, storage.prepare_output(places_dir) if train else None,
                                      storage.prepare_output(heldout_dir), cfg.train)
        else:  # nothing to hold out (no second view to find): the staged parts are the places
            heldout = 0
            storage.prepare_output(heldout_dir)
            if train:
                if places_dir.fs.exists(places_dir.path):  # an earlier try's parts, never committed
                    places_dir.fs.rm(places_dir.path, recursive=True)
                staging.fs.mv(staging.path, places_dir.path, recursive=True)
        held = {"kind": "heldout-places", "rows": heldout, **about}
        storage.commit(heldout_dir, held)
        if staging.fs.exists(staging.path):
            staging.fs.rm(staging.path, recursive=True)
        if not train:
            return held
    manifest = {"kind": "places", "rows": files.rows - (heldout or 0), "corpus": files.rows, "dropped": files.dropped,
                "heldout": heldout if files.cross_view else None, **about}
    storage.commit(places_dir, manifest)
    return manifest


def place_targets(cfg: RunConfig, places_dir: storage.Location, first_out: str, view_out: str) -> list:
    """The embed stage's targets (``EmbedTarget``) for a committed places folder (``write_places``' parts): the
    first views into ``first_out`` and, in a cross-view folder, the second views into ``view_out`` (with the
    model's view encoder), the first with the query prompt and the second with the corpus prompt. The parts'
    ids are strings, so both go in one embed run."""
    from hardneg.pipelines.embed import EmbedTarget

    about = storage.read_manifest(places_dir)
    # A place whose view cannot be embedded is dropped, not fatal (the places stage checked them already).
    base = {"path": places_dir.url, "id_column": "id", "drop_invalid": True}
    first = cfg.corpus.model_copy(update={**base, "text_column": "text", "image_column": "image"})
    if not about["cross_view"]:
        return [EmbedTarget(first_out, first)]
    # The view column is the image column when the views are images, else the text column; the text column of
    # image views names a column the parts lack (a corpus of images has no "text", a text one no "image").
    absent = "image" if about["values"] == "text" else "text"
    second = cfg.corpus.model_copy(update={**base, **({"text_column": absent, "image_column": "view"} if about["view_values"] == "image" else
                                                      {"text_column": "view", "image_column": "image"})})
    return [EmbedTarget(first_out, first, prefix=cfg.model.query_prompt),
            EmbedTarget(view_out, second, prefix=cfg.model.corpus_prompt, view=True)]


def place_files(here: storage.Location) -> list[tuple[str, int]]:
    """``[(url, rows), ...]`` of a round's committed ``places/``, in row order."""
    return embedding_files(here.join("places").url)


def place_arrays(here: storage.Location) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group codes, ``lat`` and ``lon`` (degrees) of every place of a round's ``places/``, in row order: what the
    batch stage composes from (``write.batch_stage``; docs/scaling.md: what stays global)."""
    table = pa.concat_tables([read_places(url, ["group_code", "lat", "lon"]) for url, _ in place_files(here)])
    return tuple(table.column(name).to_numpy() for name in ("group_code", "lat", "lon"))


def read_places(url: str, columns: Optional[list[str]] = None) -> pa.Table:
    """One file of a places folder (only ``columns`` when given)."""
    return storage.read_table_file(storage.resolve(url), columns)


def shard_ranges(total: int, num_shards: int) -> list[dict]:
    """``num_shards`` contiguous row ranges (``{"offset", "rows"}``) of about equal size over ``total`` places."""
    cuts = [total * s // num_shards for s in range(num_shards + 1)]
    return [{"offset": lo, "rows": hi - lo} for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo] or [{"offset": 0, "rows": 0}]


def shard_rows(files: list[tuple[str, int]], shard: dict, columns: Optional[list[str]] = None) -> pa.Table:
    """The rows of ``shard`` (``{"offset", "rows"}``), read from the files of a places folder that hold them (only
    ``columns`` when given)."""
    pieces, start = [], 0
    lo, hi = shard["offset"], shard["offset"] + shard["rows"]
    for url, rows in files:
        if start < hi and start + rows > lo:
            first = max(lo, start)
            pieces.append(read_places(url, columns).slice(first - start, min(hi, start + rows) - first))
        start += rows
    return pa.concat_tables(pieces) if pieces else read_places(files[0][0], columns).slice(0, 0)


class PlaceShard(ShardActor):
    """The places of one shard (``{"offset", "rows"}`` of the folder's rows) and their index, built here over
    their unit vectors: float64 in a k-d tree (exact), float32 for the other backends.

    Every method takes and returns global rows; a row another shard owns must not be asked for.
    """

    def __init__(self, files: list[tuple[str, int]], shard: dict, cfg: IndexConfig, storage_options: dict,
                 similarity: Optional[dict] = None):
        storage.restore_options(storage_options)
        table = shard_rows(files, shard)
        self.offset = shard["offset"]
        self.lat, self.lon = table.column("lat").to_numpy(), table.column("lon").to_numpy()
        self.groups = table.column("group_code").to_numpy()
        self.ids = table.column("id").combine_chunks()
        # A negative is shown as the place's second view in a cross-view corpus (what the trainer pairs with a first view).
        self.values = table.column("view" if "view" in table.column_names else value_name(table)).combine_chunks()
        self.index = build_index(unit_vectors(self.lat, self.lon), cfg)
        self.similar_index = self.exact_index = None
        if similarity is not None:  # the mixed miner: the places' embeddings and their index (``place_index``), in place-row order
            self.similar_cfg = similar = similarity["cfg"]
            stored = storage.resolve(similarity["index"]).join(index_shard(similarity["index"], shard)["file"])
            if similar.backend in ("exact", "kdtree"):  # the shard's file is its candidates' vectors: build from them
                self.candidates = np.load(io.BytesIO(storage.read_bytes(stored)), allow_pickle=False)
                self.similar_index = build_index(self.candidates, similar)
            else:
                self.similar_index = load_index(storage.read_bytes(stored), similar)
                self.candidates = own_vectors(self.ids, similarity["second"] or similarity["first"])
            self.first = own_vectors(self.ids, similarity["first"]) if similarity["second"] else self.candidates
            self.value_hash = hash_texts(self.values.to_pylist())  # equal values: one place seen twice

    def place_facts(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lat, lon, group codes)`` of this shard's ``rows``."""
        local = np.asarray(rows, np.int64) - self.offset
        return self.lat[local], self.lon[local], self.groups[local]

    def texts_of(self, rows: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """``(ids, values)`` of this shard's ``rows``: the values a negative shows."""
        take = pa.array(np.asarray(rows, np.int64) - self.offset)
        return self.ids.take(take), self.values.take(take)

    def similar(self, queries: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, global rows)`` of the ``k`` places whose candidate vector (the second view in a cross-view
        corpus) scores highest against each query, by the similarity index or (``exact``) by exact search."""
        index = self.similar_index
        if exact and self.similar_cfg.backend not in ("exact", "kdtree"):
            if self.exact_index is None:
                self.exact_index = build_index(self.candidates, self.similar_cfg.model_copy(update={"backend": "exact", "device": "cpu"}))
            index = self.exact_index
        scores, rows = index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, np.where(rows >= 0, rows + self.offset, -1)

    def similar_facts(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(lat, lon, group codes, value hashes)`` of this shard's ``rows``."""
        local = np.asarray(rows, np.int64) - self.offset
        return self.lat[local], self.lon[local], self.groups[local], self.value_hash[local]

    def vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(first-view vectors, candidate vectors)`` of this shard's ``rows``."""
        local = np.asarray(rows, np.int64) - self.offset
        return self.first[local], self.candidates[local]


def place_index(cfg: RunConfig, here: storage.Location, similarity: dict) -> dict:
    """The mixed round's index stage: the similarity index over the places' candidate vectors (their second
    view in a cross-view corpus), one shard per ``shard_ranges`` range of ``places/`` rows (the
    ``PlaceShard``s' own), built once by a Ray task per shard and committed as ``here/index/``
    (``hardneg.search.stored``'s layout); a committed one is read back (a resumed round)."""
    from hardneg.pipelines.index import commit_index

    out = here.join("index")
    if storage.is_committed(out):
        return index_manifest(out.url)
    started = time.perf_counter()
    files = place_files(here)
    candidates = similarity["second"] or similarity["first"]
    shards = shard_ranges(sum(rows for _, rows in files), cfg.index.num_shards)
    return commit_index(cfg.index, out, write_place_shard, [((files, shard, candidates, cfg.index), shard["offset"]) for shard in shards],
                        candidates, started, rows_in="places")


def write_place_shard(files: list[tuple[str, int]], shard: dict, embeddings_dir: str, cfg: IndexConfig, out_url: str,
                      storage_options: dict) -> int:
    """One shard of ``place_index``: the vectors of its places, in place-row order, indexed and written to ``out_url``."""
    storage.restore_options(storage_options)
    return write_vectors(lambda: own_vectors(shard_rows(files, shard, ["id"]).column("id").combine_chunks(), embeddings_dir), cfg, out_url)


def index_shard(index_dir: str, shard: dict) -> dict:
    """The entry of ``index_dir``'s manifest for the ``PlaceShard`` over ``shard``'s rows.

    Raises:
        StorageError: the index was built over other rows (the places changed after it was built).
    """
    for entry in index_manifest(index_dir)["shards"]:
        if (entry["offset"], entry["rows"]) == (shard["offset"], shard["rows"]):
            return entry
    raise StorageError(f"{index_dir}: no shard over places rows {shard['offset']}..{shard['offset'] + shard['rows'] - 1} "
                       "(the index was built over other places or shards); delete it to rebuild")


def own_vectors(ids: pa.Array, embeddings_dir: str) -> np.ndarray:
    """The vectors of ``ids``, in their order, read one file at a time from a committed embeddings folder (every
    file is read; only these rows are kept)."""
    want = pd.Index(ids.to_numpy(zero_copy_only=False))
    out, found = None, np.zeros(len(want), bool)
    for url, rows in embedding_files(embeddings_dir):
        file_ids, vectors = read_embeddings("", [(url, rows)])
        at = want.get_indexer(file_ids)
        mine = at >= 0
        if out is None and len(vectors):
            out = np.zeros((len(want), vectors.shape[1]), np.float32)
        if mine.any():
            out[at[mine]], found[at[mine]] = vectors[mine], True
    if not found.all():
        raise StorageError(f"{embeddings_dir}: {int((~found).sum())} places have no embedding (the folder changed after the "
                           f"round started); e.g. id {want[int(np.argmin(found))]!r}")
    return out if out is not None else np.zeros((0, 0), np.float32)


class ShardSearch:
    """The shards as the geographic miner's index: ``search`` (float64 queries kept for a k-d tree), ``ntotal``
    and the score error it certifies against (a k-d tree's when one shard ranks alone; float32 when
    shards are merged by their float32 scores)."""

    def __init__(self, shards, ntotal: int, backend: str):
        self.shards, self.ntotal = shards, ntotal
        one_tree = backend == "kdtree" and len(shards.shards) == 1
        self.score_error = 1e-12 if one_tree else FLOAT32_SCORE_ERROR

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.shards.search(queries, k)


def mine_place_file(plan, shards, scorer, task: int) -> dict:
    """The geographic miner over the places of one file of the round's ``places/``: their rows written to
    ``plan.out_dir`` (unless None: the round's mined table is committed already); returns their figures
    (``Tally.result``) and, for the batch stage (``mine.batches``), their negatives' rows (``pool_arrays``)."""
    start, table = task_places(plan, task)
    result = geographic_half(plan, shards, table, start, plan.params)
    keep = write_place_rows(plan, shards, task, start, table, result.negative_rows, result.counts, negative_km=result.negative_km)
    tally = Tally(plan.params.num_negatives)
    tally.add(per_query_histogram(result.counts, plan.params.num_negatives), int(keep.sum()), sums=geo_stats(result),
              samples={"negative_km": result.negative_km[~np.isnan(result.negative_km)]})
    return {**tally.result(seed=plan.params.seed + start), **pool_arrays(plan, result.negative_rows)}


def pool_arrays(plan, negative_rows: np.ndarray) -> dict:
    """What a task sends back for the batch stage: its places' negatives' rows (``np.savez`` bytes, 8 bytes a
    negative), only when the round composes batches (``mine.batches``: the walk over the pool is global,
    docs/scaling.md); nothing otherwise."""
    if not plan.cfg.mine.batches:
        return {}
    out = io.BytesIO()
    np.savez(out, negative_rows=negative_rows)
    return {"arrays": out.getvalue()}


def task_places(plan, task: int) -> tuple[int, pa.Table]:
    """The first global row of a task's places file, and its places."""
    (url, _), = plan.files[task]
    return sum(count for files in plan.files[:task] for _, count in files), read_places(url)  # the tasks' files, in row order


def geographic_half(plan, shards, table: pa.Table, start: int, params):
    """``geographic_negatives`` (``params``: the mine config) for a task's places, the candidates' coordinates
    served by the shards; a ``GeoResult``."""
    search = ShardSearch(shards, shards.ntotal(), plan.cfg.index.backend)
    return geographic_negatives(np.arange(start, start + table.num_rows, dtype=np.int64), table.column("lat").to_numpy(),
                                table.column("lon").to_numpy(), table.column("group_code").to_numpy(),
                                lambda rows: shards.gather("place_facts", rows), search, params,
                                seed=params.seed + start // plan.cfg.index.query_batch_size,
                                query_batch_size=plan.cfg.index.query_batch_size)


def geo_stats(result) -> dict:
    """A ``GeoResult``'s counts as a task sends them (summed over tasks by ``add_sums``; ``depth``: the largest)."""
    return {"removed": {name: result.removed[name] for name in GEO_REMOVED}, "short": result.short_queries,
            "uncertified": result.uncertified, "depth": result.depth}


def write_place_rows(plan, shards, task: int, start: int, table: pa.Table, negative_rows: np.ndarray, counts: np.ndarray,
                     **lists: np.ndarray) -> np.ndarray:
    """Write a task's kept rows (``places_table``, the negatives' ids and values looked up in the shards) to
    ``plan.out_dir`` (nothing when None); returns which rows were kept. Task 0 writes even when it keeps
    none, so the mined table always has a file with its schema."""
    from hardneg.pipelines.write import kept_rows, places_table

    keep = kept_rows(plan.cfg, counts)
    if plan.out_dir is not None and (keep.any() or task == 0):
        present = negative_rows >= 0
        shown = table.column("view" if "view" in table.column_names else value_name(table))
        negatives = shards.texts_of(negative_rows[present]) if present.any() else (table.column("id").chunk(0)[:0], shown.chunk(0)[:0])
        mined = places_table(table, negative_rows, plan.round_index, plan.encoder, negatives=negatives, **lists)
        storage.write_parquet(mined.filter(pa.array(keep)), storage.resolve(plan.out_dir).join(f"part-{start:012d}.parquet"))
    return keep
