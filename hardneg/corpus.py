"""Corpus validation at the door: every bad row is named by file, row and column.

Rules: the id column and the text column (or, in a corpus of images, the image column) exist; ids
are strings or integers (never floats: 1.0 would silently become "1"), not null and unique across
all files; every file gives the id and value columns the same type (ints in one file and strings in
another would crash Ray Data later); text is a non-empty string; an image is a path, URL or bytes
that PIL opens and verifies (``hardneg.images.image_problem``). A corpus whose files have no text
column but an image column (``corpus.image_column``) is a corpus of images; all its files must be. A rejected corpus writes nothing. With ``drop_invalid`` the bad
rows (and the second and later copies of a duplicate id) are dropped instead and counted in
the summary; float ids and type clashes between files are refused either way.

Each file is scanned by its own Ray task once Ray runs; before it starts (the CLI's door
checks) the files are scanned in this process, a Parquet file ``SCAN_ROWS`` rows at a time. Only
64-bit id hashes and the bad rows come back to the driver, never the text: 8 bytes a corpus row,
kept sorted as ``ValidatedCorpus.id_hashes`` (in the process that validated; not pickled), which is
what queries' positives and a user's own embeddings are matched against.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hardneg.config import CorpusConfig
from hardneg.errors import InputError
from hardneg.images import image_problems
from hardneg.ray_runtime import get
from hardneg.storage import Location, iter_table_file, list_table_files, read_table_file, restore_options, s3_options

logger = logging.getLogger(__name__)

MAX_REPORTED = 10
SCAN_ROWS = 8192  # rows of a Parquet corpus file scanned at a time


@dataclass
class FileScan:
    """What one file's scan found: its rows, its bad rows and the hashes of its ids."""

    loc: Location
    num_rows: int
    problems: list[tuple[int, str, str]]  # (row, column, what is wrong)
    bad_rows: np.ndarray
    id_hashes: np.ndarray
    kinds: dict[str, str] = field(default_factory=dict)  # column -> value kind ("string", "integer", ...)
    modality: str = "text"  # what the value column holds: "text" or "image"


@dataclass
class ValidatedCorpus:
    """A corpus that passed validation: its files, the rows to drop in each, and counts."""

    files: list[Location]
    drop_rows: list[np.ndarray]
    num_rows: int
    dropped: dict[str, int] = field(default_factory=dict)
    file_rows: list[int] = field(default_factory=list)
    modality: str = "text"  # "text" or "image" (the corpus has corpus.image_column, not corpus.text_column)
    id_hashes: Optional[np.ndarray] = field(default=None, repr=False)  # sorted ``hash_ids`` of the valid rows

    def __getstate__(self) -> dict:
        """Pickled (to Ray tasks and actors) without ``id_hashes``: they serve the process that validated."""
        return {**self.__dict__, "id_hashes": None}

    def value_column(self, cfg: CorpusConfig) -> str:
        """The column that is embedded: ``cfg.text_column``, or ``cfg.image_column`` for a corpus of images."""
        return cfg.image_column if self.modality == "image" else cfg.text_column

    @property
    def num_valid(self) -> int:
        return self.num_rows - sum(self.dropped.values())

    def valid_rows(self, index: int) -> int:
        """Rows of file ``index`` that will be embedded."""
        return self.file_rows[index] - len(self.drop_rows[index])

    def subset(self, indices: list[int]) -> "ValidatedCorpus":
        """The files ``indices`` alone, as a corpus of their own."""
        drops = [self.drop_rows[i] for i in indices]
        rows = [self.file_rows[i] for i in indices]
        return ValidatedCorpus([self.files[i] for i in indices], drops, sum(rows),
                               {"dropped": int(sum(len(d) for d in drops))}, rows, self.modality)


def text_problems(texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Per row: '' if the text is fine, else what is wrong with it."""
    out = np.full(len(texts), "", dtype=object)
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        values = texts.to_pylist()
        for row, value in enumerate(values):
            if value is None:
                out[row] = "null text"
            elif not isinstance(value, str):
                out[row] = f"text is {type(value).__name__}, not a string"
            elif not value.strip():
                out[row] = "empty text"
        return out
    null = pc.is_null(texts).to_numpy(zero_copy_only=False)
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts.fill_null(""))), 0).to_numpy(zero_copy_only=False)
    out[empty] = "empty text"
    out[null] = "null text"
    return out


def value_kind(type_: pa.DataType) -> str:
    """``"string"`` or ``"integer"`` (any width), else the Arrow type's name: what must agree between files."""
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    if pa.types.is_integer(type_):
        return "integer"
    return str(type_)


def refuse_float_ids(loc: Location, ids: pa.ChunkedArray | pa.Array, column: str) -> None:
    """Ids must be strings or integers: a float id (``0.0``) would silently become the string ``"0"``.

    Raises:
        InputError: naming the file, the first row and the column.
    """
    if not pa.types.is_floating(ids.type) and not (pa.types.is_list(ids.type) and pa.types.is_floating(ids.type.value_type)):
        return
    values = ids.to_pylist()
    row = next((index for index, value in enumerate(values) if value is not None), 0)
    raise InputError(
        f"{loc.url}: row {row}, column {column}: float id {values[row]!r} (the whole column is read as floats); "
        "ids must be strings or integers, since a float id such as 1.0 would silently become '1'. "
        "Write them as integers (1) or strings (\"1.0\")."
    )


def check_same_kinds(scans: list[FileScan]) -> None:
    """Every file gives each column the same kind of value, or Ray Data cannot combine their blocks.

    Raises:
        InputError: naming both files, the column and the two kinds.
    """
    first: dict[str, tuple[str, str]] = {}
    for scan in scans:
        for column, kind in scan.kinds.items():
            if kind == "null":  # an all-null column takes any type; its rows are reported as null
                continue
            url, seen = first.setdefault(column, (scan.loc.url, kind))
            if kind != seen:
                raise InputError(
                    f"{url} and {scan.loc.url}: column {column} holds {seen} values in the first and {kind} values in "
                    "the second; every file of a corpus must give a column one type (ids all strings or all integers)"
                )


def hash_ids(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Stable 64-bit hashes of ids' string forms, as the rounds write them (a corpus gives all its ids one
    type, ``check_same_kinds``, so 1 and '1' never meet), comparable with queries' positive ids."""
    return pd.util.hash_array(ids.cast(pa.string()).to_numpy(zero_copy_only=False).astype(object, copy=False), categorize=False)


def group_codes(groups: Optional[pa.ChunkedArray | pa.Array], num_rows: int) -> np.ndarray:
    """int64 code per row for ``group`` values (``-1``: no group): 63 bits of the value's hash, so a file's codes
    agree with every other file's without a dictionary of all the groups."""
    if groups is None:
        return np.full(num_rows, -1, dtype=np.int64)
    codes = (hash_ids(groups.fill_null("")) >> np.uint64(1)).astype(np.int64)
    return np.where(pc.is_null(groups).to_numpy(zero_copy_only=False), -1, codes)


def contains(sorted_hashes: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Per hash of ``hashes``: is it in ``sorted_hashes`` (sorted, unique)."""
    if not len(sorted_hashes):
        return np.zeros(len(hashes), bool)
    at = np.minimum(np.searchsorted(sorted_hashes, hashes), len(sorted_hashes) - 1)
    return sorted_hashes[at] == hashes


class SeenHashes:
    """The 64-bit hashes (of texts, ids) kept so far: sorted chunks, one per file, merged when there are many (8 bytes
    a hash); what finds a repeat across files without holding the values."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []

    def first_new(self, digests: np.ndarray) -> np.ndarray:
        """Rows whose hash is neither seen nor on an earlier row (the first of each new value), now seen."""
        first = np.flatnonzero(~pd.Index(digests).duplicated())
        for chunk in self.chunks:
            first = first[~contains(chunk, digests[first])]
        self.chunks.append(np.sort(digests[first]))
        if len(self.chunks) > 16:
            self.chunks = [np.sort(np.concatenate(self.chunks))]
        return first


def scan_file(loc: Location, cfg: CorpusConfig) -> FileScan:
    """Scan one corpus file against the rules (runs in a Ray task), ``SCAN_ROWS`` rows at a time."""
    problems, hashes, kinds, modality, rows = [], [], {}, "text", 0
    for start, table in iter_table_file(loc, [cfg.id_column, cfg.text_column, cfg.image_column], SCAN_ROWS):
        if start == 0:
            modality = "image" if cfg.text_column not in table.column_names and cfg.image_column in table.column_names else "text"
            value_column = cfg.image_column if modality == "image" else cfg.text_column
            missing = [c for c in (cfg.id_column, value_column) if c not in table.column_names]
            if missing:
                raise InputError(
                    f"{loc.url}: missing column(s) {', '.join(missing)} (corpus.id_column={cfg.id_column!r}, "
                    f"corpus.text_column={cfg.text_column!r}, or corpus.image_column={cfg.image_column!r} for images); "
                    f"columns found: {', '.join(table.column_names)}"
                )
            kinds = {cfg.id_column: value_kind(table.column(cfg.id_column).type), value_column: value_kind(table.column(value_column).type)}
        ids, values = table.column(cfg.id_column), table.column(value_column)
        refuse_float_ids(loc, ids, cfg.id_column)
        null_ids = np.flatnonzero(pc.is_null(ids).to_numpy(zero_copy_only=False))
        problems += [(start + int(row), cfg.id_column, "null id") for row in null_ids]
        value_issue = image_problems(values) if modality == "image" else text_problems(values)
        problems += [(start + int(row), value_column, value_issue[row]) for row in np.flatnonzero(value_issue != "")]
        hashes.append(hash_ids(ids))
        rows += table.num_rows
    problems.sort()
    bad = np.unique(np.array([row for row, _, _ in problems], dtype=np.int64))
    return FileScan(loc, rows, problems, bad, np.concatenate(hashes), kinds, modality)


def validate_corpus(cfg: CorpusConfig, path: str | None = None) -> ValidatedCorpus:
    """Scan every file of the corpus and fail on the first bad rows, or drop them.

    The files are scanned on Ray tasks when Ray runs in this process, else here (the door checks).

    Raises:
        InputError: naming file, row and column of up to ten bad rows, or both files of a type clash.
    """
    path = path or cfg.path
    if not path:
        raise InputError("corpus.path is not set")
    return _judge(_scan_files(list_table_files(path), cfg), cfg)


def _scan_files(files: list[Location], cfg: CorpusConfig) -> list[FileScan]:
    import ray

    if not ray.is_initialized():  # Arrow reads without the GIL: threads use the driver's cores
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return list(pool.map(lambda loc: scan_file(loc, cfg), files))
    scan = ray.remote(_scan_on_worker).options(num_cpus=1, max_retries=2)
    return get([scan.remote(loc, cfg, s3_options()) for loc in files])


def _scan_on_worker(loc: Location, cfg: CorpusConfig, storage_options: dict) -> FileScan:
    restore_options(storage_options)  # image URLs (s3://) go to the driver's endpoint
    return scan_file(loc, cfg)


def _judge(scans: list[FileScan], cfg: CorpusConfig) -> ValidatedCorpus:
    check_same_kinds(scans)
    modalities = {scan.modality: scan.loc.url for scan in scans}
    if len(modalities) > 1:
        raise InputError(f"{modalities['text']} has a {cfg.text_column!r} column (corpus.text_column) and {modalities['image']} "
                         f"has {cfg.image_column!r} instead (corpus.image_column): a corpus is texts or images, in every file")
    drop = [scan.bad_rows for scan in scans]
    dropped = {"invalid": int(sum(len(rows) for rows in drop))}
    problems = [f"{scan.loc.url}: row {row}, column {col}: {what}" for scan in scans for row, col, what in scan.problems]
    duplicates, id_hashes = _duplicate_rows(scans, drop)
    dropped["duplicate_id"] = int(sum(len(rows) for rows in duplicates))
    for scan, dup_rows in zip(scans, duplicates):
        if len(dup_rows):
            ids = read_table_file(scan.loc, [cfg.id_column]).column(cfg.id_column)
            problems += [
                f"{scan.loc.url}: row {row}, column {cfg.id_column}: duplicate id {ids[int(row)].as_py()!r}"
                for row in dup_rows[:MAX_REPORTED]
            ]
    if problems and not cfg.drop_invalid:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise InputError(
            f"invalid corpus ({len(problems)} problem(s)); nothing was written:\n  {shown}{more}\n"
            "Fix the rows, or pass --drop-invalid (corpus.drop_invalid: true) to drop and count them."
        )
    drop_rows = [np.union1d(bad, dup) for bad, dup in zip(drop, duplicates)]
    total = int(sum(scan.num_rows for scan in scans))
    if problems:
        logger.warning("dropping %d invalid row(s) of %d: %s", sum(map(len, drop_rows)), total, dropped)
    if total - sum(map(len, drop_rows)) == 0:
        raise InputError("the corpus has no valid rows")
    return ValidatedCorpus([scan.loc for scan in scans], drop_rows, total, dropped, [int(scan.num_rows) for scan in scans],
                           scans[0].modality, id_hashes)


def _duplicate_rows(scans: list[FileScan], bad: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per file, the rows whose id already appeared earlier (in file order, then row order), bad rows aside;
    and the sorted unique hashes of the valid ids. Holds two hash arrays (16 bytes a row); the rows of a
    repeated id are found only when there is one."""
    hashes = np.concatenate([np.delete(scan.id_hashes, bad[index]) for index, scan in enumerate(scans)]) if scans else np.zeros(0, np.uint64)
    for scan in scans:
        scan.id_hashes = None  # the concatenation replaces them
    ordered = np.sort(hashes)
    repeated = ordered[1:] == ordered[:-1]
    if not repeated.any():
        return [np.zeros(0, np.int64) for _ in scans], ordered
    later = np.ones(len(hashes), dtype=bool)
    later[np.unique(hashes, return_index=True)[1]] = False  # every copy but the first
    out, start = [], 0
    for index, scan in enumerate(scans):
        keep = np.ones(scan.num_rows, dtype=bool)
        keep[bad[index]] = False
        rows = np.flatnonzero(keep)
        out.append(np.sort(rows[later[start:start + len(rows)]]))
        start += len(rows)
    return out, ordered[np.concatenate([[True], ~repeated])]  # sorted already: one of each
