"""A places corpus (``id``, ``lat``, ``lon``, optional ``text`` or ``image``, ``view`` and ``group``), validated at the door.

``view`` (``corpus.view_column``) makes the corpus cross-view, as in Sample4Geo: each place has two
views (``text`` and ``view``), the place's own ``view`` is its positive and other places' views are
its negatives. A file that has the column must fill it in every row.

A file with no ``text`` column but an ``image`` one (``corpus.image_column``) is a corpus of images:
both views are images (path, URL or bytes), each opened and verified at the door, and the table
carries ``image`` instead of ``text`` (``place_values``). All files of a corpus agree.

Rules, each failure named by file, row and column: the id, lat and lon columns exist; ids are
strings or integers (not floats), not null and unique across files; lat and lon are numbers, not null or NaN, lat in [-90, 90],
lon in [-180, 180]. With ``corpus.drop_invalid`` the bad rows are dropped and counted instead.
A corpus of 100 rows or more whose every coordinate lies within [-pi, pi] is probably in
radians: a WARNING says so (the values are still read as degrees).

Example::

    places = load_places(CorpusConfig(path="cities.jsonl"))
    places.table.column_names   # ['id', 'lat', 'lon', 'text', 'group']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hardneg import storage
from hardneg.config import CorpusConfig
from hardneg.corpus import MAX_REPORTED, refuse_float_ids
from hardneg.errors import InputError
from hardneg.images import image_problems

logger = logging.getLogger(__name__)

RADIANS_MIN_ROWS = 100


@dataclass
class Places:
    """The valid rows of a places corpus: ``id`` (string), ``lat``, ``lon`` (float64), ``text`` (or ``image``, paths or
    bytes), ``group`` (string, nullable) and, for a cross-view corpus, ``view`` (string, or images)."""

    table: pa.Table
    num_rows: int
    dropped: dict = field(default_factory=dict)


def place_values(table: pa.Table) -> pa.ChunkedArray:
    """A places table's first view: its ``image`` column in a corpus of images, else its ``text``."""
    return table.column("image" if "image" in table.column_names else "text")


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


def warn_if_radians(lat: np.ndarray, lon: np.ndarray, source: str) -> bool:
    """Log a WARNING (and return True) when a corpus of >= 100 rows has every |lat|, |lon| <= pi."""
    if len(lat) >= RADIANS_MIN_ROWS and np.all(np.abs(lat) <= np.pi) and np.all(np.abs(lon) <= np.pi):
        logger.warning("%s: all %d coordinates lie within [-pi, pi]: they look like radians, but lat/lon are read as "
                       "degrees; convert with numpy.degrees if they are radians", source, len(lat))
        return True
    return False


def load_places(cfg: CorpusConfig, path: Optional[str] = None) -> Places:
    """Read and validate every file of the places corpus at ``path`` (``cfg.path`` when None).

    Raises:
        InputError: naming file, row and column of up to ten bad rows.
    """
    path = path or cfg.path
    if not path:
        raise InputError("corpus.path is not set (a places corpus: columns id, lat, lon)")
    tables, problems, owners = [], [], []
    for loc in storage.list_table_files(path):
        table, file_problems = _read_file(loc, cfg)
        problems += [(loc.url, row, column, what) for row, column, what in file_problems]
        tables.append(table)
        owners.append((loc.url, table.num_rows))
    imaged = [loc for (loc, _), table in zip(owners, tables) if "image" in table.column_names]
    if imaged and len(imaged) < len(tables):
        bare = next(loc for (loc, _), table in zip(owners, tables) if "image" not in table.column_names)
        raise InputError(f"{bare}: a {cfg.text_column!r} column (corpus.text_column), but {imaged[0]} has {cfg.image_column!r} "
                         "instead (corpus.image_column): a places corpus is texts or images, in every file")
    viewed = [loc for (loc, _), table in zip(owners, tables) if "view" in table.column_names]
    if viewed and len(viewed) < len(tables):
        bare = [loc for (loc, _), table in zip(owners, tables) if "view" not in table.column_names]
        raise InputError(f"{bare[0]}: no {cfg.view_column!r} column (corpus.view_column), but {viewed[0]} has one: "
                         "a cross-view corpus needs both views in every file")
    table = pa.concat_tables(tables, promote_options="default")
    problems += _duplicates(table.column("id"), owners, cfg.id_column)
    bad = sorted({_global_row(owners, url, row) for url, row, _, _ in problems})
    if problems and not cfg.drop_invalid:
        lines = [f"{url}: row {row}, column {column}: {what}" for url, row, column, what in sorted(problems)]
        more = f"\n  ... and {len(lines) - MAX_REPORTED} more" if len(lines) > MAX_REPORTED else ""
        raise InputError(f"invalid places corpus ({len(lines)} problem(s)); nothing was written:\n  "
                         + "\n  ".join(lines[:MAX_REPORTED]) + more
                         + "\nFix the rows, or pass --drop-invalid (corpus.drop_invalid: true) to drop and count them.")
    if bad:
        keep = np.ones(table.num_rows, bool)
        keep[bad] = False
        logger.warning("dropping %d invalid row(s) of %d", len(bad), table.num_rows)
        table = table.filter(pa.array(keep))
    if table.num_rows == 0:
        raise InputError(f"{path}: the places corpus has no valid rows")
    warn_if_radians(table.column("lat").to_numpy(), table.column("lon").to_numpy(), path)
    return Places(table, table.num_rows + len(bad), {"invalid": len(bad)})


def _read_file(loc: storage.Location, cfg: CorpusConfig) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    wanted = [cfg.id_column, cfg.lat_column, cfg.lon_column, cfg.text_column, cfg.group_column, cfg.view_column, cfg.image_column]
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
    if cfg.view_column in raw.column_names:
        views = raw.column(cfg.view_column)
        missing = pc.is_null(views).to_numpy(zero_copy_only=False)
        problems += [(int(row), cfg.view_column, "missing view (a cross-view place needs both views)") for row in np.flatnonzero(missing)]
        if images:
            problems += [problem for problem in _image_problems(views, cfg.view_column) if not missing[problem[0]]]
        columns["view"] = views if images else views.cast(pa.string())
    return pa.table(columns), problems


def _image_problems(values: pa.ChunkedArray, column: str) -> list[tuple[int, str, str]]:
    issue = image_problems(values)
    return [(int(row), column, issue[row]) for row in np.flatnonzero(issue != "")]


def _duplicates(ids: pa.ChunkedArray, owners: list[tuple[str, int]], id_column: str) -> list[tuple[str, int, str, str]]:
    values = pd.Series(ids.to_numpy(zero_copy_only=False))
    repeated = np.flatnonzero(values.duplicated().to_numpy() & values.notna().to_numpy())
    starts = np.cumsum([0] + [rows for _, rows in owners])
    out = []
    for row in repeated:
        file_index = int(np.searchsorted(starts, row, side="right") - 1)
        out.append((owners[file_index][0], int(row - starts[file_index]), id_column, f"duplicate id {values[row]!r}"))
    return out


def _global_row(owners: list[tuple[str, int]], url: str, row: int) -> int:
    start = 0
    for owner, rows in owners:
        if owner == url:
            return start + row
        start += rows
    raise ValueError(url)
