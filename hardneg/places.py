"""A places corpus (``id``, ``lat``, ``lon``, optional ``text`` or ``image``, ``view`` and ``group``), validated at the door.

``view`` (``corpus.view_column``) makes the corpus cross-view, as in Sample4Geo: each place has two
views (``text`` and ``view``), the place's own ``view`` is its positive and other places' views are
its negatives. A file that has the column must fill it in every row.

A file with no ``text`` column but an ``image`` one (``corpus.image_column``) is a corpus of images:
both views are images (path, URL or bytes), each opened and verified at the door, and the table
carries ``image`` instead of ``text`` (``place_values``). A text corpus whose second view is images
(``corpus.view_image_column`` instead of ``view``: a name or caption against a photo, for a dual
text+image model) carries them as ``view`` too (``view_values``). All files of a corpus agree.

Rules, each failure named by file, row and column: the id, lat and lon columns exist; ids are
strings or integers (not floats), not null and unique across files; lat and lon are numbers, not null or NaN, lat in [-90, 90],
lon in [-180, 180]. With ``corpus.drop_invalid`` the bad rows are dropped and counted instead.
The corpus is read one file at a time (``prepare_places``): each file's valid places are written before
the next is read, and the driver keeps 8 bytes an id.
A corpus of 100 rows or more whose every coordinate lies within [-pi, pi] is probably in
radians: a WARNING says so (the values are still read as degrees).

Example::

    prepare_places(CorpusConfig(path="cities.jsonl"))   # the door's check: PlaceFiles(rows=..., dropped=...)
    prepare_places(cfg.corpus, storage.prepare_output(storage.resolve("runs/g/rounds/00000/places")), rows_per_file=4096)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hardneg import storage
from hardneg.config import CorpusConfig
from hardneg.corpus import MAX_REPORTED, SeenHashes, group_codes, hash_ids, refuse_float_ids, text_problems
from hardneg.errors import InputError
from hardneg.images import image_problems

logger = logging.getLogger(__name__)

RADIANS_MIN_ROWS = 100
VIEW_KEY = b"hardneg.view"  # schema metadata: b"image" when a text corpus's second views are images


def place_values(table: pa.Table) -> pa.ChunkedArray:
    """A places table's first view: its ``image`` column in a corpus of images, else its ``text``."""
    return table.column(value_name(table))


def view_values(table: pa.Table | pa.Schema) -> Optional[str]:
    """What a places table's (or schema's) second view holds, ``"text"`` or ``"image"`` (None: not cross-view): a
    corpus of images has image views; a text corpus has text views unless they came from
    ``corpus.view_image_column`` (marked in the schema's metadata, which the ``places/`` parts keep)."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    if "view" not in schema.names:
        return None
    return "image" if value_name(schema) == "image" or (schema.metadata or {}).get(VIEW_KEY) == b"image" else "text"


def value_name(table: pa.Table | pa.Schema) -> str:
    """The first view's column of a places table (or schema): ``image`` in a corpus of images, else ``text``."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    return "image" if "image" in schema.names else "text"


def coordinate_problems(values: pa.ChunkedArray | pa.Array, column: str, limit: float) -> list[tuple[int, str, str]]:
    """``(row, column, what is wrong)`` for null, NaN, non-numeric or out-of-range coordinates.

    Example::

        coordinate_problems(pa.array([10.0, None, 91.0]), "lat", 90)
        # [(1, 'lat', 'null lat'), (2, 'lat', 'lat 91.0 is outside [-90, 90]')]
    """
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type) or pa.types.is_null(values.type)):
        return [(row, column, f"{column} {value!r} is not a number") for row, value in enumerate(values.to_pylist())
                if not isinstance(value, (int, float)) or isinstance(value, bool)]
    numbers = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
    nulls = pc.is_null(values).to_numpy(zero_copy_only=False)
    problems = []
    for row in np.flatnonzero(nulls | np.isnan(numbers) | (np.abs(np.nan_to_num(numbers)) > limit)):
        what = (f"null {column}" if nulls[row] else f"{column} is NaN" if np.isnan(numbers[row])
                else f"{column} {float(numbers[row])!r} is outside [-{limit:g}, {limit:g}]")
        problems.append((int(row), column, what))
    return problems


@dataclass
class PlaceFiles:
    """What ``prepare_places`` checked (and wrote): the places kept, the rows dropped (``corpus.drop_invalid``),
    the first view's kind (``"text"`` or ``"image"``) and the second's (``view_values``; None: not cross-view)."""

    rows: int
    dropped: dict
    values: str
    view_values: Optional[str]

    @property
    def cross_view(self) -> bool:
        return self.view_values is not None


def prepare_places(cfg: CorpusConfig, out: Optional[storage.Location] = None, rows_per_file: int = 4096,
                   texts: bool = False) -> PlaceFiles:
    """Check the places corpus (``cfg.path``) one file at a time and write its valid places into ``out`` (a
    prepared folder; None: write nothing, the door's check) in parts of at most ``rows_per_file`` rows, in
    file order: ``id``, the first view (``text`` or ``image``), ``view`` (cross-view), ``lat``, ``lon`` and
    ``group_code`` (``group_codes``). One file is in memory at a time, plus 8 bytes an id (repeats are
    found by the ids' 64-bit hashes); a refusal leaves ``out`` removed. ``texts``: the views are also
    embedded as texts (the mixed miner), so an empty or null text is a bad row too, as the corpus rules say.

    Raises:
        InputError: naming file, row and column of up to ten bad rows.
    """
    path = cfg.path
    if not path:
        raise InputError("corpus.path is not set (a places corpus: columns id, lat, lon)")
    problems, seen, first = [], SeenHashes(), None
    rows = read = parts = 0
    biggest = np.zeros(2)  # the largest |lat| and |lon| kept: the radians warning's test
    try:
        for loc in storage.list_table_files(path):
            table, file_problems = _read_file(loc, cfg)
            _same_views(first, (loc.url, table), cfg)
            first = first or (loc.url, table.schema)
            file_problems += _text_and_repeat_problems(table, cfg, seen, texts)
            problems += [(loc.url, row, column, what) for row, column, what in sorted(file_problems)]
            read += table.num_rows
            if problems and not cfg.drop_invalid:
                continue  # keep checking, to name every bad row; nothing more is written
            keep = np.ones(table.num_rows, bool)
            keep[[row for row, _, _ in file_problems]] = False
            table = table.filter(pa.array(keep)) if not keep.all() else table
            if len(file_problems):
                logger.warning("%s: dropping %d invalid row(s) of %d", loc.url, int((~keep).sum()), len(keep))
            if table.num_rows:
                biggest = np.maximum(biggest, [np.abs(table.column(c).to_numpy()).max() for c in ("lat", "lon")])
            for start in range(0, table.num_rows, rows_per_file) if out is not None else ():
                storage.write_parquet(_place_part(table.slice(start, rows_per_file)), out.join(f"part-{parts:06d}.parquet"))
                parts += 1
            rows += table.num_rows
        if problems and not cfg.drop_invalid:
            lines = [f"{url}: row {row}, column {column}: {what}" for url, row, column, what in problems]
            more = f"\n  ... and {len(lines) - MAX_REPORTED} more" if len(lines) > MAX_REPORTED else ""
            raise InputError(f"invalid places corpus ({len(lines)} problem(s)); nothing was written:\n  "
                             + "\n  ".join(lines[:MAX_REPORTED]) + more
                             + "\nFix the rows, or pass --drop-invalid (corpus.drop_invalid: true) to drop and count them.")
        if rows == 0:
            raise InputError(f"{path}: the places corpus has no valid rows")
    except InputError:
        if out is not None and out.fs.exists(out.path):
            out.fs.rm(out.path, recursive=True)
        raise
    if rows >= RADIANS_MIN_ROWS and np.all(biggest <= np.pi):
        logger.warning("%s: all %d coordinates lie within [-pi, pi]: they look like radians, but lat/lon are read as "
                       "degrees; convert with numpy.degrees if they are radians", path, rows)
    return PlaceFiles(rows, {"invalid": read - rows}, value_name(first[1]), view_values(first[1]))


def _text_and_repeat_problems(table: pa.Table, cfg: CorpusConfig, seen: SeenHashes, texts: bool) -> list[tuple[int, str, str]]:
    """A file's ids seen before (in it or an earlier file: ``seen``, now holding its ids) and, with ``texts``,
    its empty or null texts (both views when they are texts)."""
    problems = []
    if texts:
        for column in [c for c in ("text", "view") if c in table.column_names and value_name(table) == "text"
                       and (c == "text" or view_values(table) == "text")]:
            problems += [(int(row), cfg.text_column if column == "text" else cfg.view_column, what)
                         for row, what in enumerate(text_problems(table.column(column))) if what]
    ids = table.column("id")
    named = np.flatnonzero(pc.is_valid(ids).to_numpy(zero_copy_only=False))
    repeated = np.setdiff1d(named, named[seen.first_new(hash_ids(ids.take(pa.array(named))))])
    return problems + [(int(row), cfg.id_column, f"duplicate id {ids[int(row)].as_py()!r}") for row in repeated]


def _same_views(first: Optional[tuple[str, pa.Schema]], this: tuple[str, pa.Table], cfg: CorpusConfig) -> None:
    """Refuse a file whose views differ from the first file's: texts against images, or with against without ``view``."""
    if first is None:
        return
    (first_url, schema), (url, table) = first, this
    if value_name(schema) != value_name(table):
        imaged, bare = (first_url, url) if value_name(schema) == "image" else (url, first_url)
        raise InputError(f"{bare}: a {cfg.text_column!r} column (corpus.text_column), but {imaged} has {cfg.image_column!r} "
                         "instead (corpus.image_column): a places corpus is texts or images, in every file")
    if ("view" in schema.names) != ("view" in table.column_names):
        viewed, bare = (first_url, url) if "view" in schema.names else (url, first_url)
        raise InputError(f"{bare}: no {cfg.view_column!r} column (corpus.view_column), but {viewed} has one: "
                         "a cross-view corpus needs both views in every file")
    if view_values(schema) != view_values(table):
        raise InputError(f"{url}: its second views are {view_values(table)}s, but {first_url}'s are {view_values(schema)}s "
                         f"(corpus.view_column holds texts, corpus.view_image_column images): one kind in every file")


def _place_part(table: pa.Table) -> pa.Table:
    """A file's valid places as ``places/`` holds them."""
    columns = {"id": table.column("id"), value_name(table): place_values(table)}
    if "view" in table.column_names:
        columns["view"] = table.column("view")
    columns.update(lat=table.column("lat"), lon=table.column("lon"), group_code=pa.array(group_codes(table.column("group"), table.num_rows)))
    return pa.table(columns).replace_schema_metadata(table.schema.metadata)


def _read_file(loc: storage.Location, cfg: CorpusConfig) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    wanted = [cfg.id_column, cfg.lat_column, cfg.lon_column, cfg.text_column, cfg.group_column, cfg.view_column, cfg.image_column,
              cfg.view_image_column]
    raw = storage.read_table_file(loc, wanted)
    missing = [c for c in wanted[:3] if c not in raw.column_names]
    if missing:
        raise InputError(f"{loc.url}: missing column(s) {', '.join(missing)} (corpus.id_column={cfg.id_column!r}, "
                         f"corpus.lat_column={cfg.lat_column!r}, corpus.lon_column={cfg.lon_column!r}); "
                         f"columns found: {', '.join(raw.column_names)}")
    ids = raw.column(cfg.id_column)
    refuse_float_ids(loc, ids, cfg.id_column)
    problems = [(int(row), cfg.id_column, "null id") for row in np.flatnonzero(pc.is_null(ids).to_numpy(zero_copy_only=False))]
    problems += coordinate_problems(raw.column(cfg.lat_column), cfg.lat_column, 90)
    problems += coordinate_problems(raw.column(cfg.lon_column), cfg.lon_column, 180)
    bad_coords = {row for row, column, _ in problems if column != cfg.id_column}
    columns = {"id": ids.cast(pa.string())}
    for name, source in (("lat", cfg.lat_column), ("lon", cfg.lon_column)):
        values = raw.column(source)
        if bad_coords:  # non-numbers cannot be cast; they are dropped or reported anyway
            values = pa.array([None if row in bad_coords else v for row, v in enumerate(values.to_pylist())], pa.float64())
        columns[name] = values.cast(pa.float64())
    images = cfg.text_column not in raw.column_names and cfg.image_column in raw.column_names
    for name, source in (("image" if images else "text", cfg.image_column if images else cfg.text_column), ("group", cfg.group_column)):
        present = source in raw.column_names
        columns[name] = raw.column(source) if name == "image" else \
            raw.column(source).cast(pa.string()) if present else pa.nulls(raw.num_rows, pa.string())
    if images:
        problems += _image_problems(raw.column(cfg.image_column), cfg.image_column)
    view_column = cfg.view_column if cfg.view_column in raw.column_names else \
        cfg.view_image_column if cfg.view_image_column in raw.column_names and not images else None
    view_images = images or view_column == cfg.view_image_column
    if view_column:
        views = raw.column(view_column)
        missing = pc.is_null(views).to_numpy(zero_copy_only=False)
        problems += [(int(row), view_column, "missing view (a cross-view place needs both views)") for row in np.flatnonzero(missing)]
        if view_images:
            problems += [problem for problem in _image_problems(views, view_column) if not missing[problem[0]]]
        columns["view"] = views if view_images else views.cast(pa.string())
    table = pa.table(columns)
    return (table.replace_schema_metadata({VIEW_KEY: b"image"}) if view_column and view_images else table), problems


def _image_problems(values: pa.ChunkedArray, column: str) -> list[tuple[int, str, str]]:
    issue = image_problems(values)
    return [(int(row), column, issue[row]) for row in np.flatnonzero(issue != "")]
