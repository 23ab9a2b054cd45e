"""Prepare a run's inputs once: the corpus to embed and the queries with their positives.

Two input shapes (``queries.format``):

- ``pairs``: a table of ``anchor``/``positive`` texts, as ``mine_hard_negatives`` takes. The
  corpus is the unique positives plus the optional extra corpus (``corpus.path``), one row a
  text (a text the extra corpus repeats, or that is a positive, is kept once); ids are
  content hashes (``t`` + 16 hex digits), so they are stable across runs and rounds. A query
  is a unique anchor; its positives are every positive paired with it.
- ``queries``: ``query_id``, ``query``, ``positive_ids`` (a list of corpus ids) over a corpus
  with ids (``corpus.path``).

Prepared tables are committed under ``RUN_DIR/inputs/`` (``corpus/`` for pairs only,
``queries/``) and reused by every round. Both shapes are read one file at a time: queries with ids
are checked and written a part per file; pairs give a corpus part per file (its texts not seen before)
and go to bucket files by anchor, each bucket then grouped into queries. The driver keeps 8 bytes a
corpus text and 8 a query, never the rows.

Example::

    inputs = prepare_inputs(cfg, storage.resolve(cfg.run_dir))
    inputs.corpus_cfg.path      # what the embed stage reads
    inputs.query_rows           # unique queries
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hardneg import storage
from hardneg.config import CorpusConfig, RunConfig
from hardneg.corpus import MAX_REPORTED, SeenHashes, ValidatedCorpus, contains, hash_ids, refuse_float_ids, text_problems, validate_corpus
from hardneg.errors import InputError
from hardneg.images import image_problems
from hardneg.miners import hash_texts
from hardneg.ray_runtime import run_jobs

logger = logging.getLogger(__name__)

def queries_schema(query: pa.DataType = pa.string()) -> pa.Schema:
    """``inputs/queries``: ``query`` holds texts, or a query image as given (a path or URL, or bytes)."""
    return pa.schema([("query_id", pa.string()), ("query", query), ("positive_ids", pa.list_(pa.string()))])


QUERIES_SCHEMA = queries_schema()


@dataclass
class Inputs:
    """What every round mines from. The driver holds the queries' counts, not their rows: each stage reads
    ``inputs/queries`` where it runs.

    Attributes:
        corpus_cfg: the corpus as the embed stage reads it (id/text/group columns named).
        corpus: the validated corpus files.
        queries_url: the committed ``inputs/queries`` (``query_id``, ``query``, ``positive_ids``; one row per unique query).
        query_rows: how many queries it holds.
        max_positives: the most positive ids one query has.
        pairs_per_anchor: for pairs input, the most input rows one anchor has, repeated pairs counted
            (sentence-transformers' ``max_positives``, which widens its candidate window); else 0.
        query_modality: what ``query`` holds, ``"text"`` or ``"image"`` (``queries.query_image_column``).
    """

    corpus_cfg: CorpusConfig
    corpus: ValidatedCorpus
    queries_url: str
    query_rows: int
    max_positives: int = 1
    pairs_per_anchor: int = 0
    query_modality: str = "text"


def text_id(text: str | bytes) -> str:
    """A content id for a text (or an image's path or bytes): ``t`` + 16 hex digits of blake2b (what pairs input
    uses as corpus ids)."""
    return _ids(hash_texts([text]))[0]


def prepare_inputs(cfg: RunConfig, run_dir: storage.Location) -> Inputs:
    """Build (or reuse) the committed ``inputs/`` of a run directory.

    Raises:
        InputError: a bad row, naming file, row and column; nothing is committed.
    """
    queries_dir = run_dir.join("inputs", "queries")
    sources = input_fingerprint(cfg)
    if storage.is_committed(queries_dir):
        _check_same_sources(queries_dir, sources)
    if cfg.queries.format == "pairs":
        corpus_dir = run_dir.join("inputs", "corpus")
        if not storage.is_committed(queries_dir):
            # Both folders are made in one pass: a corpus committed without its queries (a crash between the two
            # commits) is made again with them; nothing has read it yet, as the rounds start after the queries.
            if corpus_dir.fs.exists(corpus_dir.path):
                corpus_dir.fs.rm(corpus_dir.path, recursive=True)
            made = _from_pairs(cfg, storage.prepare_output(corpus_dir), storage.prepare_output(queries_dir),
                               storage.prepare_output(run_dir.join("inputs", "pairs-staging")))
            storage.commit(corpus_dir, {"kind": "corpus", "source": cfg.queries.path, "extra_corpus": cfg.corpus.path,
                                        "rows": made.corpus_rows})
            storage.commit(queries_dir, {"kind": "queries", "source": cfg.queries.path, "sources": sources, "rows": len(made.query_digests),
                                         "pairs_per_anchor": made.pairs_per_anchor, "max_positives": made.max_positives,
                                         "query_modality": made.query_modality})
        corpus_cfg = CorpusConfig(path=corpus_dir.url, id_column="id", text_column="text", group_column="group")
        validated = validate_corpus(corpus_cfg)
    else:
        if not cfg.corpus.path:
            raise InputError("queries.format=queries needs corpus.path (the corpus the positive_ids refer to)")
        corpus_cfg = cfg.corpus
        validated = validate_corpus(corpus_cfg)
        if not storage.is_committed(queries_dir):
            checked = _from_queries(cfg, validated.id_hashes, storage.prepare_output(queries_dir))
            storage.commit(queries_dir, {"kind": "queries", "source": cfg.queries.path, "sources": sources, "rows": checked.rows,
                                         "max_positives": checked.max_positives, "query_modality": checked.modality})
    manifest = storage.read_manifest(queries_dir)
    max_positives = manifest.get("max_positives")
    if max_positives is None:  # inputs prepared before the manifest recorded it: from the lists' lengths alone
        max_positives = _max_positives(storage.read_table(queries_dir.url, ["positive_ids"]))
    return Inputs(corpus_cfg, validated, queries_dir.url, int(manifest["rows"]), int(max_positives),
                  int(manifest.get("pairs_per_anchor") or 0), manifest.get("query_modality", "text"))


def _max_positives(queries: pa.Table) -> int:
    return int(pc.max(pc.list_value_length(queries.column("positive_ids"))).as_py() or 0)


@dataclass
class InputIds:
    """The inputs' ids, as the door matches a user's own embeddings against them.

    Attributes:
        corpus_hashes: sorted unique ``hash_ids`` of the corpus ids (8 bytes a row).
        corpus_ids: the corpus ids as strings, read when called (only to name a mismatch).
        query_ids: the query ids as strings, read when called.
        modality: what the corpus holds, ``"text"`` or ``"image"``.
        query_modality: what the queries ask with, ``"text"`` or ``"image"``.
    """

    corpus_hashes: np.ndarray
    corpus_ids: Callable[[], pa.Array]
    query_ids: Callable[[], pa.Array]
    modality: str = "text"
    query_modality: str = "text"


def check_inputs(cfg: RunConfig, run_dir: storage.Location, want_ids: bool = False) -> Optional[InputIds]:
    """Run every check ``prepare_inputs`` runs, writing nothing (the CLI's door, before Ray starts); returns the
    inputs' ids, or None for inputs a run directory already committed (only compared with their sources, a
    resumed run) unless ``want_ids``.

    Args:
        want_ids: the ids even of committed inputs (to check a user's own embeddings).

    Raises:
        InputError: what ``prepare_inputs`` would raise.
    """
    queries_dir = run_dir.join("inputs", "queries")
    if storage.is_committed(queries_dir):
        _check_same_sources(queries_dir, input_fingerprint(cfg))
        if not want_ids:
            return None
        corpus_cfg = cfg.corpus if cfg.queries.format == "queries" else CorpusConfig(path=run_dir.join("inputs", "corpus").url)
        corpus = validate_corpus(corpus_cfg)
        hashes, ids, modality = corpus.id_hashes, lambda: corpus_ids(corpus, corpus_cfg), corpus.modality
        query_ids = lambda: storage.read_table(queries_dir.url, ["query_id"]).column("query_id").combine_chunks()  # noqa: E731
        query_modality = storage.read_manifest(queries_dir).get("query_modality", "text")
    elif cfg.queries.format == "pairs":
        made = _from_pairs(cfg)
        hashes, modality, query_ids, query_modality = made.corpus_hashes, made.modality, made.query_ids, made.query_modality
        ids = lambda: pairs_corpus_ids(cfg, hashes)  # noqa: E731
    elif not cfg.corpus.path:
        raise InputError("queries.format=queries needs corpus.path (the corpus the positive_ids refer to)")
    else:
        corpus = validate_corpus(cfg.corpus)
        hashes, ids, modality = corpus.id_hashes, lambda: corpus_ids(corpus, cfg.corpus), corpus.modality
        query_modality = _from_queries(cfg, hashes).modality
        query_ids = lambda: source_query_ids(cfg)  # noqa: E731
    return InputIds(hashes, ids, query_ids, modality, query_modality)


def pairs_corpus_ids(cfg: RunConfig, corpus_hashes: np.ndarray) -> pa.Array:
    """The corpus ids pairs input makes (its positives' ``text_id``, then the extra corpus' ids it keeps: those in
    ``corpus_hashes``), read again file by file; only to name ids a user's own embeddings lack or add."""
    q, arrays = cfg.queries, []
    for loc in storage.list_table_files(q.path):
        table = storage.read_table_file(loc, [q.positive_column, q.positive_image_column])
        positives = table.column(0).to_pylist()  # the positives' one column: texts, or images
        arrays.append(pa.array([text_id(text) for text in dict.fromkeys(positives)], pa.string()))
    if cfg.corpus.path:
        arrays.append(corpus_ids(validate_corpus(cfg.corpus), cfg.corpus))
    ids = pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())
    ids = ids.filter(pa.array(contains(corpus_hashes, hash_ids(ids))))
    return pc.unique(ids)


def source_query_ids(cfg: RunConfig) -> pa.Array:
    """The query ids (strings) of ``queries.path``, read file by file, only the id column."""
    column = cfg.queries.query_id_column
    arrays = [storage.read_table_file(loc, [column]).column(column).cast(pa.string()).combine_chunks()
              for loc in storage.list_table_files(cfg.queries.path)]
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())


def input_fingerprint(cfg: RunConfig) -> list[list]:
    """``[url, size, modified]`` of every queries and corpus file: what a resumed run must still read."""
    out = []
    for loc, info in storage.table_file_infos((cfg.queries.path, cfg.corpus.path)):
        modified = info.get("ETag") or info.get("mtime") or info.get("LastModified")
        out.append([loc.url, int(info.get("size") or 0), str(modified)])
    return out


def _check_same_sources(queries_dir: storage.Location, sources: list[list]) -> None:
    """Refuse to resume a run directory whose inputs were prepared from other files (or other versions)."""
    before = storage.read_manifest(queries_dir).get("sources")
    if before is not None and before != sources:
        changed = sorted({tuple(f)[0] for f in before} ^ {tuple(f)[0] for f in sources}) or [
            a[0] for a, b in zip(sorted(before), sorted(sources)) if a != b]
        raise InputError(
            f"{queries_dir.url} was prepared from other inputs than this run's ({', '.join(changed[:3])} changed); "
            "a run directory keeps the inputs it started with: use a new run_dir"
        )


def load_corpus(corpus: ValidatedCorpus, cfg: CorpusConfig, ids: Optional[pa.Array] = None) -> pa.Table:
    """``id`` (string), ``text`` (in a corpus of images: its images, paths or URLs or bytes, as given) and,
    when the corpus has it, ``group`` of every valid row, in file order; only the rows whose id is in
    ``ids`` when given (one file in memory at a time)."""
    tables, value = [], corpus.value_column(cfg)
    for loc, drop in zip(corpus.files, corpus.drop_rows):
        table = _valid_rows(loc, drop, [cfg.id_column, value, cfg.group_column])
        values = table.column(value) if corpus.modality == "image" else table.column(value).cast(pa.string())
        columns = {"id": table.column(cfg.id_column).cast(pa.string()), "text": values}
        if cfg.group_column in table.column_names:
            columns["group"] = table.column(cfg.group_column).cast(pa.string())
        table = pa.table(columns)
        tables.append(table if ids is None else table.filter(pc.is_in(table.column("id"), value_set=ids)))
    return pa.concat_tables(tables, promote_options="default")


def _read_checked_file(loc: storage.Location, columns: list[str], what: str, fallback: Optional[dict] = None) -> pa.Table:
    """The file's ``columns`` (or a column's ``fallback`` instead), failing with file + column when one is missing."""
    fallback = fallback or {}
    table = storage.read_table_file(loc, columns + list(fallback.values()))
    missing = [c for c in columns if c not in table.column_names and fallback.get(c) not in table.column_names]
    if missing:
        raise InputError(f"{loc.url}: missing column(s) {', '.join(missing)} for {what}; columns found: {', '.join(table.column_names)}")
    return table


def _text_errors(loc: storage.Location, table: pa.Table, columns: list[str], problems=text_problems) -> list[str]:
    """``file: row R, column C: what is wrong`` for every bad value of ``columns`` (``problems``: texts', or ``image_problems``)."""
    errors = []
    for column in columns:
        issues = problems(table.column(column))
        errors += [f"{loc.url}: row {row}, column {column}: {issues[row]}" for row in np.flatnonzero(issues != "")]
    return errors


def _raise_if(errors: list[str], what: str) -> None:
    if errors:
        more = f"\n  ... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise InputError(f"invalid {what} ({len(errors)} problem(s)); nothing was written:\n  " + "\n  ".join(errors[:MAX_REPORTED]) + more)


PAIRS_BUCKET_BYTES = 16 * 2**20  # pairs files' bytes per bucket of the anchors' group-by (one bucket is grouped in memory)


@dataclass
class PairsFiles:
    """What ``_from_pairs`` checked (and wrote).

    Attributes:
        corpus_hashes: sorted unique ``hash_ids`` of the corpus ids (8 bytes a row).
        corpus_rows: the corpus' rows (unique positives, then the extra corpus' rows with new texts).
        query_digests: sorted unique 64-bit digests of the anchors (a query id is ``t`` + their 16 hex digits).
        pairs_per_anchor: the most input rows one anchor has, repeated pairs counted.
        max_positives: the most distinct positives one anchor has.
        modality, query_modality: what the positives (the corpus) and the anchors are, ``"text"`` or ``"image"``.
    """

    corpus_hashes: np.ndarray
    corpus_rows: int
    query_digests: np.ndarray
    pairs_per_anchor: int
    max_positives: int
    modality: str = "text"
    query_modality: str = "text"

    def query_ids(self) -> pa.Array:
        return pa.array(_ids(self.query_digests), pa.string())


def _ids(digests) -> list[str]:
    """``text_id``s of 64-bit digests (an array or a list of ints)."""
    return [f"t{d:016x}" for d in (digests.tolist() if isinstance(digests, np.ndarray) else digests)]


def _from_pairs(cfg: RunConfig, corpus_out: Optional[storage.Location] = None, queries_out: Optional[storage.Location] = None,
                staging: Optional[storage.Location] = None, bucket_bytes: int = PAIRS_BUCKET_BYTES) -> PairsFiles:
    """Check the pairs (plus the optional extra corpus) one file at a time and, given the three prepared folders,
    write the corpus and the queries (None: write nothing, the door's check).

    The corpus is written a part per file as its new texts arrive (one text is one item, as sentence-transformers
    de-duplicates its corpus); the pairs go to ``staging`` in buckets by anchor, and each bucket is grouped into
    queries (a unique anchor, its positives in the order they came) and written as one part of ``queries_out``;
    ``staging`` is removed after. The driver holds one file plus 8 bytes a corpus text and 8 a query; a bucket (a
    share ``bucket_bytes`` of the pairs files' bytes) is grouped by a task (``run_jobs``: on Ray when Ray runs
    here). A refusal removes what was written."""
    q = cfg.queries
    if not q.path:
        raise InputError("queries.path is not set (the pairs file: columns anchor, positive)")
    files = storage.list_table_files(q.path)
    total = sum(int(info.get("size") or 0) for _, info in storage.table_file_infos([q.path]))
    buckets = max(1, -(-total // bucket_bytes))
    writes = corpus_out is not None
    errors, seen, hashes, anchors_seen = [], SeenHashes(), [], []
    kinds: dict[str, dict[str, str]] = {"anchors": {}, "positives": {}}  # how each side is given (text, path, binary) -> a file
    parts = rows = 0
    try:
        for number, loc in enumerate(files):
            table = _read_checked_file(loc, [q.anchor_column, q.positive_column], "queries.format=pairs",
                                       {q.anchor_column: q.anchor_image_column, q.positive_column: q.positive_image_column})
            columns = [q.anchor_column if q.anchor_column in table.column_names else q.anchor_image_column,
                       q.positive_column if q.positive_column in table.column_names else q.positive_image_column]
            for side, column in zip(kinds, columns):
                images = column in (q.anchor_image_column, q.positive_image_column)
                errors += _text_errors(loc, table, [column], image_problems if images else text_problems)
                kinds[side].setdefault(_value_type(table.column(column), images), loc.url)
            if errors:
                continue
            anchor_values, positive_values = (_as_given(table.column(column)) for column in columns)
            anchors, positives = anchor_values.to_pylist(), positive_values.to_pylist()
            anchor_digests, positive_digests = hash_texts(anchors), hash_texts(positives)
            new = seen.first_new(positive_digests)
            ids = pa.array(_ids(positive_digests[new]), pa.string())
            hashes.append(hash_ids(ids))
            anchors_seen.append(pd.unique(anchor_digests))
            if writes:
                positive_name = "image" if columns[1] == q.positive_image_column else "text"
                storage.write_parquet(pa.table({"id": ids, positive_name: positive_values.take(pa.array(new, pa.int64()))}),
                                      corpus_out.join(f"part-{parts:05d}.parquet"))
                order = np.arange(rows, rows + len(anchors), dtype=np.int64)
                bucket = (anchor_digests % np.uint64(buckets)).astype(np.int64)
                pairs = pa.table({"order": order, "anchor_digest": anchor_digests, "anchor": anchor_values,
                                  "positive_digest": positive_digests})
                for b in np.unique(bucket).tolist():
                    storage.write_parquet(pairs.filter(pa.array(bucket == b)), staging.join(f"bucket-{b:05d}", f"file-{number:05d}.parquet"))
            parts, rows = parts + 1, rows + len(anchors)
        _raise_if(errors, "pairs")
        query_modality, modality = (_kind_of(kinds[side], q.path, side) for side in kinds)
        if cfg.corpus.path:  # the extra corpus: its rows whose text (or image) is new, in file order
            extra = validate_corpus(cfg.corpus)
            if extra.modality != modality:
                raise InputError(f"{cfg.corpus.path}: the extra corpus holds {extra.modality}s, but the pairs' positives are "
                                 f"{modality}s (queries.positive_column or queries.positive_image_column): one corpus, one kind")
            value = extra.value_column(cfg.corpus)
            for loc, drop in zip(extra.files, extra.drop_rows):
                table = _valid_rows(loc, drop, [cfg.corpus.id_column, value])
                values = _as_given(table.column(value))
                new = seen.first_new(hash_texts(values.to_pylist()))
                ids = table.column(cfg.corpus.id_column).cast(pa.string()).take(pa.array(new, pa.int64()))
                hashes.append(hash_ids(ids))
                if writes:
                    storage.write_parquet(pa.table({"id": ids, "image" if modality == "image" else "text": values.take(pa.array(new, pa.int64()))}),
                                          corpus_out.join(f"part-{parts:05d}.parquet"))
                    parts += 1
        corpus_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        per_anchor = most_positives = 0
        if writes:  # a task per bucket (on Ray when it runs here)
            query_type = pa.binary() if "binary" in kinds["anchors"] else pa.string()
            jobs = [(staging.join(f"bucket-{b:05d}").url, queries_out.join(f"part-{b:05d}.parquet").url, storage.s3_options(), query_type)
                    for b in range(buckets)]
            for repeats, positives_most in run_jobs(group_bucket, jobs, num_cpus=1):
                per_anchor, most_positives = max(per_anchor, repeats), max(most_positives, positives_most)
            staging.fs.rm(staging.path, recursive=True)
    except InputError:
        for out in (corpus_out, queries_out, staging):
            if out is not None and out.fs.exists(out.path):
                out.fs.rm(out.path, recursive=True)
        raise
    queries = np.unique(np.concatenate(anchors_seen)) if anchors_seen else np.zeros(0, np.uint64)
    logger.info("pairs: %d rows, %d unique queries, corpus %d texts", rows, len(queries), len(corpus_hashes))
    return PairsFiles(np.unique(corpus_hashes), len(corpus_hashes), queries, per_anchor, most_positives, modality, query_modality)


def _as_given(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Texts and image paths as strings, images given as bytes as binary."""
    return values.cast(pa.binary() if _is_bytes(values.type) else pa.string())


def _is_bytes(type_: pa.DataType) -> bool:
    return pa.types.is_binary(type_) or pa.types.is_large_binary(type_)


def _value_type(values: pa.ChunkedArray, images: bool) -> str:
    """How a pairs column gives its values: ``"text"``, or images as ``"binary"`` (bytes) or ``"path"``."""
    return "text" if not images else "binary" if _is_bytes(values.type) else "path"


def _kind_of(types: dict[str, str], path: str, what: str) -> str:
    """``"text"`` or ``"image"``: what every pairs file gives as ``what`` (``types``: each way seen -> a file), or a
    refusal naming two files that disagree."""
    if len(types) > 1:
        (first, first_url), (second, second_url) = list(types.items())[:2]
        raise InputError(f"{path}: {first_url} gives the {what} as {first}s and {second_url} as {second}s; give them one way "
                         "in every file (texts, or images as paths or as bytes)")
    return "text" if set(types) <= {"text"} else "image"


def group_bucket(bucket_url: str, out_url: str, storage_options: dict, query_type: pa.DataType = pa.string()) -> tuple[int, int]:
    """Group one bucket of pairs into queries, written to ``out_url``; the most rows one anchor has and the most
    distinct positives. ``query_type``: the anchors' Arrow type (texts and image paths: string; images: binary)."""
    storage.restore_options(storage_options)
    grouped, repeats, positives_most = _group_pairs(storage.resolve(bucket_url), query_type)
    storage.write_parquet(grouped, storage.resolve(out_url))
    return repeats, positives_most


def _group_pairs(bucket: storage.Location, query_type: pa.DataType = pa.string()) -> tuple[pa.Table, int, int]:
    """One bucket's pairs as queries (``query_id``, ``query``, ``positive_ids``; anchors and each anchor's positives
    in the order they came), the most rows one anchor has and the most distinct positives."""
    files = storage.list_table_files(bucket.url) if bucket.fs.exists(bucket.path) else []
    if not files:
        return queries_schema(query_type).empty_table(), 0, 0
    pairs = pa.concat_tables([storage.read_table_file(loc) for loc in files])
    pairs = pairs.take(pc.sort_indices(pairs.column("order")))
    anchor_digests = pairs.column("anchor_digest").to_numpy()
    positive_digests = pairs.column("positive_digest").to_numpy()
    anchors = pairs.column("anchor").to_pylist()
    positives_of: dict[int, list[int]] = {}
    text_of: dict[int, str] = {}
    counts: Counter = Counter(anchor_digests.tolist())
    for anchor, text, positive in zip(anchor_digests.tolist(), anchors, positive_digests.tolist()):
        listed = positives_of.setdefault(anchor, [])
        text_of.setdefault(anchor, text)
        if positive not in listed:
            listed.append(positive)
    table = pa.table({
        "query_id": _ids(list(positives_of)),
        "query": [text_of[a] for a in positives_of],
        "positive_ids": [_ids(p) for p in positives_of.values()],
    }, schema=queries_schema(query_type))
    return table, max(counts.values()), max(len(p) for p in positives_of.values())


@dataclass
class QueryFiles:
    """What ``_from_queries`` checked (and wrote): the rows, the most positives one query has, and what the
    queries ask with, ``"text"`` or ``"image"``."""

    rows: int
    max_positives: int
    modality: str


def _from_queries(cfg: RunConfig, known: np.ndarray, out: Optional[storage.Location] = None) -> QueryFiles:
    """Check the queries file by file, every positive id against the corpus' sorted id hashes ``known``, and write
    each file's rows (``query_id``, ``query``, ``positive_ids``) as one part of ``out`` (a prepared folder; None:
    write nothing, the door's check). One file is in memory at a time, plus 8 bytes a query id; a refusal
    leaves ``out`` removed. A file with ``queries.query_image_column`` and no query column asks with images."""
    q = cfg.queries
    if not q.path:
        raise InputError("queries.path is not set (columns query_id, query, positive_ids)")
    errors, kinds, types, files, hashes = [], set(), set(), [], []
    rows = max_positives = 0
    try:
        for loc in storage.list_table_files(q.path):
            table = _read_checked_file(loc, [q.query_id_column, q.query_column, q.positive_ids_column], "queries.format=queries",
                                       {q.query_column: q.query_image_column})
            asked = q.query_column if q.query_column in table.column_names else q.query_image_column  # texts, or images
            kinds.add(asked)
            errors += _text_errors(loc, table, [asked], text_problems if asked == q.query_column else image_problems)
            refuse_float_ids(loc, table.column(q.query_id_column), q.query_id_column)
            refuse_float_ids(loc, table.column(q.positive_ids_column), q.positive_ids_column)
            qids = table.column(q.query_id_column).cast(pa.string()).combine_chunks()
            lists = table.column(q.positive_ids_column).to_pylist()
            unknown_of = _unknown_ids(lists, known)
            for row in np.flatnonzero(qids.is_null().to_numpy(zero_copy_only=False)).tolist():
                errors.append(f"{loc.url}: row {row}, column {q.query_id_column}: null query id")
            for row, positive_ids in enumerate(lists):
                where = f"{loc.url}: row {row}, column {q.positive_ids_column}"
                if not isinstance(positive_ids, list) or not positive_ids:
                    errors.append(f"{where}: expected a non-empty list of corpus ids, got {positive_ids!r}")
                elif row in unknown_of:
                    errors.append(f"{where}: id {unknown_of[row]!r} is not in the corpus")
            values = table.column(asked)
            kind = pa.binary() if pa.types.is_binary(values.type) else pa.string()
            types.add(kind)
            part = pa.table({
                "query_id": qids,
                "query": values if kind == pa.binary() else values.cast(pa.string()),
                "positive_ids": [[str(p) for p in (ids or [])] for ids in lists],
            }, schema=queries_schema(kind))
            if out is not None and not errors:
                storage.write_parquet(part, out.join(f"part-{len(files):05d}.parquet"))
            files.append(loc)
            hashes.append(hash_ids(qids.fill_null("")))
            rows += part.num_rows
            max_positives = max(max_positives, max((len(ids) for ids in lists if isinstance(ids, list)), default=0))
        errors += _duplicate_ids(files, hashes, q.query_id_column)
        _raise_if(errors, "queries")
        if len(types) > 1:
            raise InputError(f"{q.path}: some files give the query images as bytes and others as paths; give them one way")
        if len(kinds) > 1:
            raise InputError(f"{q.path}: some files ask with texts ({q.query_column}) and others with images ({q.query_image_column})")
    except InputError:
        if out is not None and out.fs.exists(out.path):
            out.fs.rm(out.path, recursive=True)
        raise
    return QueryFiles(rows, max_positives, "image" if kinds and kinds != {q.query_column} else "text")


def _duplicate_ids(files: list[storage.Location], hashes: list[np.ndarray], column: str) -> list[str]:
    """``file: row R, column C: duplicate query id`` for every query id an earlier row (in any file) has; found by
    the ids' hashes, then read back and compared, so a hash collision is never reported."""
    if not hashes:
        return []
    every = np.concatenate(hashes)
    _, first, counts = np.unique(every, return_index=True, return_counts=True)
    if counts.max(initial=1) == 1:
        return []
    seen = np.zeros(len(every), bool)
    seen[first] = True
    repeated = np.flatnonzero(~seen)  # rows after the first with their hash
    starts = np.cumsum([0] + [len(h) for h in hashes])
    ids = {}  # file number -> its ids, read back only for the files involved
    first_of = dict(zip(every[first].tolist(), first.tolist()))

    def id_at(position: int) -> Optional[str]:
        number = int(np.searchsorted(starts, position, side="right") - 1)
        if number not in ids:
            ids[number] = storage.read_table_file(files[number], [column]).column(column).cast(pa.string()).to_pylist()
        return ids[number][position - starts[number]]

    errors = []
    for position in repeated.tolist():
        qid = id_at(position)
        if qid is not None and qid == id_at(first_of[int(every[position])]):
            number = int(np.searchsorted(starts, position, side="right") - 1)
            errors.append(f"{files[number].url}: row {position - starts[number]}, column {column}: duplicate query id {qid!r}")
    return errors


def _unknown_ids(lists: list, known: np.ndarray) -> dict[int, object]:
    """``{row: its first positive id not in the corpus}``, by the corpus' sorted id hashes ``known``."""
    sizes = [len(ids) if isinstance(ids, list) else 0 for ids in lists]
    flat = [ids for row in lists if isinstance(row, list) for ids in row]
    if not flat:
        return {}
    missing = np.flatnonzero(~contains(known, hash_ids(pa.array([str(p) for p in flat], pa.string()))))
    rows = np.repeat(np.arange(len(lists)), sizes)
    out: dict[int, object] = {}
    for at in missing.tolist():
        out.setdefault(int(rows[at]), flat[at])
    return out


def corpus_ids(corpus: ValidatedCorpus, cfg: CorpusConfig) -> pa.Array:
    """The string ids of every valid row, in file order (only the id column is kept, one file at a time);
    what the door reads to name ids a user's own embeddings lack or add."""
    arrays = [_valid_rows(loc, drop, [cfg.id_column]).column(cfg.id_column).cast(pa.string()).combine_chunks()
              for loc, drop in zip(corpus.files, corpus.drop_rows)]
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())


def _valid_rows(loc: storage.Location, drop: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` of one corpus file without the rows validation dropped."""
    table = storage.read_table_file(loc, columns)
    if len(drop):
        keep = np.ones(table.num_rows, dtype=bool)
        keep[drop] = False
        table = table.filter(pa.array(keep))
    return table
