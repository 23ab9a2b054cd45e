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
``queries/``) and reused by every round. Queries with ids are checked and written one file at a
time; pairs are joined into queries and corpus in the driver (ids are content hashes of the texts).

Example::

    inputs = prepare_inputs(cfg, storage.resolve(cfg.run_dir))
    inputs.corpus_cfg.path      # what the embed stage reads
    inputs.query_rows           # unique queries
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hardneg import storage
from hardneg.config import CorpusConfig, RunConfig
from hardneg.corpus import MAX_REPORTED, ValidatedCorpus, contains, hash_ids, refuse_float_ids, text_problems, validate_corpus
from hardneg.errors import InputError
from hardneg.images import image_problems

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

    def query_ids(self) -> pa.Array:
        """Every query id (strings), read from ``inputs/queries``' id column alone."""
        return storage.read_table(self.queries_url, ["query_id"]).column("query_id").combine_chunks()


def text_id(text: str) -> str:
    """A content id for a text: ``t`` + 16 hex digits of blake2b (what pairs input uses as corpus ids)."""
    return "t" + hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


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
        if not storage.is_committed(corpus_dir) or not storage.is_committed(queries_dir):
            corpus, queries, repeats = _from_pairs(cfg)
            _commit_table(corpus_dir, corpus, {"kind": "corpus", "source": cfg.queries.path, "extra_corpus": cfg.corpus.path})
            _commit_table(queries_dir, queries, {"kind": "queries", "source": cfg.queries.path, "sources": sources,
                                                 "pairs_per_anchor": repeats, "max_positives": _max_positives(queries)})
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
        table, queries, _ = _from_pairs(cfg)
        hashes, ids, modality = np.unique(hash_ids(table.column("id"))), lambda: table.column("id").combine_chunks(), "text"
        query_ids, query_modality = lambda: queries.column("query_id").combine_chunks(), "text"
    elif not cfg.corpus.path:
        raise InputError("queries.format=queries needs corpus.path (the corpus the positive_ids refer to)")
    else:
        corpus = validate_corpus(cfg.corpus)
        hashes, ids, modality = corpus.id_hashes, lambda: corpus_ids(corpus, cfg.corpus), corpus.modality
        query_modality = _from_queries(cfg, hashes).modality
        query_ids = lambda: source_query_ids(cfg)  # noqa: E731
    return InputIds(hashes, ids, query_ids, modality, query_modality)


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


def _commit_table(out: storage.Location, table: pa.Table, manifest: dict) -> None:
    storage.prepare_output(out)
    storage.write_parquet(table, out.join("part-00000.parquet"))
    storage.commit(out, {**manifest, "rows": table.num_rows})


def _read_checked(path: str, columns: list[str], what: str, fallback: Optional[dict] = None) -> list[tuple[storage.Location, pa.Table]]:
    """Each file of ``path`` with ``columns`` (``_read_checked_file``)."""
    return [(loc, _read_checked_file(loc, columns, what, fallback)) for loc in storage.list_table_files(path)]


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


def _from_pairs(cfg: RunConfig) -> tuple[pa.Table, pa.Table, int]:
    """(corpus, queries, the most rows one anchor has) from anchor/positive pairs plus the optional extra corpus."""
    q = cfg.queries
    if not q.path:
        raise InputError("queries.path is not set (the pairs file: columns anchor, positive)")
    files = _read_checked(q.path, [q.anchor_column, q.positive_column], "queries.format=pairs")
    _raise_if([e for loc, t in files for e in _text_errors(loc, t, [q.anchor_column, q.positive_column])], "pairs")
    anchors = [a for _, t in files for a in t.column(q.anchor_column).to_pylist()]
    positives = [p for _, t in files for p in t.column(q.positive_column).to_pylist()]

    texts = list(dict.fromkeys(positives))
    ids = [text_id(text) for text in texts]
    corpus = pa.table({"id": ids, "text": texts})
    if cfg.corpus.path:
        extra = load_corpus(validate_corpus(cfg.corpus), cfg.corpus).select(["id", "text"])
        seen = set(texts)  # a text is one corpus item, as sentence-transformers de-duplicates its corpus
        first = [row for row, text in enumerate(extra.column("text").to_pylist()) if not (text in seen or seen.add(text))]
        corpus = pa.concat_tables([corpus, extra.take(pa.array(first, pa.int64()))])

    positives_of: dict[str, list[str]] = {}
    for anchor, positive in zip(anchors, positives):
        ids_of = positives_of.setdefault(anchor, [])
        positive_id = text_id(positive)
        if positive_id not in ids_of:
            ids_of.append(positive_id)
    queries = pa.table({
        "query_id": [text_id(anchor) for anchor in positives_of],
        "query": list(positives_of),
        "positive_ids": list(positives_of.values()),
    }, schema=QUERIES_SCHEMA)
    logger.info("pairs: %d rows, %d unique queries, corpus %d texts", len(anchors), queries.num_rows, corpus.num_rows)
    return corpus, queries, max(Counter(anchors).values(), default=0)


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


def group_codes(groups: Optional[pa.ChunkedArray], num_rows: int) -> np.ndarray:
    """int64 code per row for ``group`` values (``-1``: no group)."""
    if groups is None:
        return np.full(num_rows, -1, dtype=np.int64)
    codes = pc.dictionary_encode(groups.combine_chunks()).indices.fill_null(-1)
    return codes.to_numpy(zero_copy_only=False).astype(np.int64)
