"""The one storage layer: local paths and ``s3://`` URLs, tables in and out, atomic commits.

A directory is *committed* once its ``MANIFEST.json`` exists. Writers fill the
directory first and write the manifest last (an object PUT on S3, a rename on a
local disk), so a reader never mistakes a half-written directory for a whole
one. Nothing committed is ever overwritten.

S3 credentials come only from the standard AWS chain (environment, profile,
instance role); ``configure(endpoint_url=...)`` points s3fs at MinIO, moto or an
on-prem store (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when no URL is given).
The CLI configures storage before it reads the first byte, the config file included.

Example::

    storage.configure(endpoint_url="http://127.0.0.1:9000")
    table = storage.read_table("s3://bucket/corpus.parquet", columns=["id", "text"])
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import typing
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import fsspec
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from hardneg.errors import InputError, StorageError

MANIFEST = "MANIFEST.json"
TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson")

ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
JSON_MAX_LINE_BYTES = 1 << 30  # Arrow's JSON block size is an int32; longer lines are refused by name
STREAM_BUFFER = 1 << 20  # streamed Parquet reads take a column chunk page by page through a buffer this size, not whole

_s3_options: dict[str, Any] = {}
_commit_checks: list[Callable[["Location"], None]] = []


def configure(endpoint_url: Optional[str] = None, region: Optional[str] = None) -> None:
    """Set the S3 endpoint and region for every ``s3://`` path opened afterwards in this process.

    Without ``endpoint_url`` the standard ``AWS_ENDPOINT_URL_S3`` (then ``AWS_ENDPOINT_URL``) applies,
    so the driver hands Ray workers the endpoint it used itself.

    Example::

        storage.configure("http://127.0.0.1:9000")          # MinIO / moto
        storage.endpoint()                                   # 'http://127.0.0.1:9000'
    """
    _s3_options.clear()
    endpoint_url = endpoint_url or next((os.environ[name] for name in ENDPOINT_ENV if os.environ.get(name)), None)
    client_kwargs = {}
    if endpoint_url:
        client_kwargs["endpoint_url"] = endpoint_url
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        _s3_options["client_kwargs"] = client_kwargs


def endpoint() -> str:
    """The S3 endpoint ``s3://`` paths go to (AWS's own when none is configured), for messages."""
    return _s3_options.get("client_kwargs", {}).get("endpoint_url") or "the AWS S3 endpoint of the bucket's region"


def s3_options() -> dict[str, Any]:
    """The options ``configure`` set, to hand to Ray workers (they carry no credentials)."""
    return json.loads(json.dumps(_s3_options))


def restore_options(options: dict[str, Any]) -> None:
    """Apply ``s3_options()`` taken in another process (a Ray worker opening the driver's paths)."""
    _s3_options.clear()
    _s3_options.update(options)


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def is_local(loc: "Location") -> bool:
    """Whether ``loc`` is on a local (or mounted) disk, where renames and ``flock`` work."""
    protocol = loc.fs.protocol
    return protocol in ("file", "local") or "file" in protocol


@dataclass(frozen=True)
class Location:
    """A resolved path: a (picklable) fsspec filesystem and the path inside it."""

    fs: fsspec.AbstractFileSystem
    path: str

    def join(self, *parts: str) -> "Location":
        return Location(self.fs, posixpath.join(self.path, *parts))

    @property
    def url(self) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return self.path if protocol in ("file", "local") else f"{protocol}://{self.path}"

    def arrow_fs(self):
        """A pyarrow filesystem over the same fsspec filesystem (what Ray Data takes)."""
        from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

        if is_local(self):
            return LocalFileSystem()
        return PyFileSystem(FSSpecHandler(self.fs))


def resolve(path: str) -> Location:
    """Resolve a local path or URL to a ``Location`` (the only place paths are interpreted)."""
    path = str(path)
    if path.startswith("s3://") or path.startswith("s3a://"):
        fs = fsspec.filesystem("s3", use_listings_cache=False, **copy.deepcopy(_s3_options))  # botocore edits its config
        return Location(fs, path.split("://", 1)[1].rstrip("/"))
    if is_remote(path):
        fs, inner = fsspec.core.url_to_fs(path)
        return Location(fs, inner)
    if path.startswith("file://"):
        path = path[len("file://"):]
    return Location(fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path)))


def check_reachable(path: str) -> None:
    """For an ``s3://`` path: one quick request to its bucket, so a wrong or dead endpoint fails at the door.

    Local paths pass. A bucket that answers at all (even "access denied") counts as reachable.

    Raises:
        StorageError: the endpoint cannot be reached; names the URL and the endpoint, never credentials.
    """
    if not path.startswith(("s3://", "s3a://")):
        return
    options = copy.deepcopy(_s3_options)
    options["config_kwargs"] = {"retries": {"max_attempts": 1}, "connect_timeout": 5, "read_timeout": 10}
    probe = fsspec.filesystem("s3", use_listings_cache=False, skip_instance_cache=True, **options)
    probe.retries = 1
    bucket = path.split("://", 1)[1].split("/", 1)[0]
    from botocore.exceptions import NoCredentialsError

    try:
        probe.call_s3("head_bucket", Bucket=bucket)
    except CONNECTION_ERRORS as err:
        raise unreachable(path, err) from None
    except NoCredentialsError:
        raise StorageError(f"no AWS credentials for {path} (endpoint {endpoint()}): set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance role") from None
    except (OSError, ValueError):
        pass  # the endpoint answered (no such bucket, access denied, ...): the real request will say what is wrong


def _connection_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    errors: tuple[type[BaseException], ...] = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)
    try:
        from aiohttp import ClientConnectorError

        errors += (ClientConnectorError,)
    except ImportError:  # pragma: no cover - s3fs brings aiohttp
        pass
    return errors


CONNECTION_ERRORS = _connection_errors()


def unreachable(url: str, err: BaseException) -> StorageError:
    """The error for an S3 endpoint that does not answer: the URL, the endpoint and what to check."""
    return StorageError(
        f"cannot reach S3 for {url}: endpoint {endpoint()} does not answer ({type(err).__name__}: {err}). "
        "Check --endpoint-url (storage.endpoint_url, or AWS_ENDPOINT_URL_S3), that the store is running, "
        "and that this host can reach it."
    )


def read_text(path: str) -> str:
    loc = resolve(path)
    with loc.fs.open(loc.path, "r", encoding="utf-8") as handle:
        return handle.read()


def exists(path: str | Location) -> bool:
    loc = path if isinstance(path, Location) else resolve(path)
    return loc.fs.exists(loc.path)


def list_table_files(path: str) -> list[Location]:
    """The Parquet/JSONL files of a corpus given as a file, a folder or a glob, sorted."""
    loc = resolve(path)
    if any(ch in loc.path for ch in "*?["):
        found = sorted(loc.fs.glob(loc.path))
    elif loc.fs.isdir(loc.path):
        found = sorted(p for p in loc.fs.find(loc.path) if not posixpath.basename(p).startswith(("_", ".")))
    elif loc.fs.exists(loc.path):
        found = [loc.path]
    else:
        raise InputError(f"{path}: no such file or folder")
    files = [p for p in found if p.endswith(TABLE_SUFFIXES) and posixpath.basename(p) != MANIFEST]
    if not files:
        raise InputError(f"{path}: no Parquet (.parquet) or JSON lines (.jsonl/.json/.ndjson) files found")
    return [Location(loc.fs, p) for p in files]


def table_file_infos(paths: Sequence[Optional[str]]) -> Iterator[tuple[Location, dict]]:
    """``(location, fs.info)`` of every table file under ``paths`` (a None path holds none), in order, listed lazily."""
    for path in paths:
        for loc in list_table_files(path) if path else []:
            yield loc, loc.fs.info(loc.path)


def read_table_file(loc: Location, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """One Parquet or JSONL file as an Arrow table (only ``columns`` when given).

    Raises:
        InputError: the file cannot be read, or holds invalid UTF-8 text; names the file and row.
    """
    try:
        if loc.path.endswith(".parquet"):
            with loc.fs.open(loc.path, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                names = parquet.schema_arrow.names
                # Missing columns are the caller's to report, with the file's name.
                table = parquet.read(columns=[c for c in columns if c in names] if columns else None)
        else:
            table = _read_json_lines(loc, columns)
    except pa.ArrowInvalid as err:  # Parquet only: the JSON reader names the row at fault itself
        raise InputError(f"{loc.url}: cannot be read as Parquet: {err}") from None
    except OSError as err:
        raise InputError(f"{loc.url}: cannot be read as a table: {err}") from None
    if columns:
        missing = [c for c in columns if c not in table.column_names]
        if missing:  # the caller reports missing columns (or skips optional ones) with the file's name
            _check_utf8(loc, table.select([c for c in columns if c in table.column_names]))
            return table
        table = table.select(list(columns))
    _check_utf8(loc, table)
    return table


def iter_table_file(loc: Location, columns: Sequence[str], batch_size: int = 65_536) -> Iterator[tuple[int, pa.Table]]:
    """``(first row, table)`` pieces of one Parquet or JSONL file, ``columns`` that it has only (at least one
    piece, maybe empty, so the caller sees which are missing), each checked as ``read_table_file`` checks.

    Parquet is decoded ``batch_size`` rows at a time (memory: one batch, plus a row group's compressed
    column chunks); a JSON lines file is read whole, then cut.

    Raises:
        InputError: as ``read_table_file``, rows named from the file's first row.
    """
    if not loc.path.endswith(".parquet"):
        table = read_table_file(loc, columns)
        for start in range(0, max(1, table.num_rows), batch_size):
            yield start, table.slice(start, batch_size)
        return
    start = 0
    try:
        with loc.fs.open(loc.path, "rb") as handle:
            parquet = pq.ParquetFile(handle, buffer_size=STREAM_BUFFER)
            present = [c for c in columns if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=batch_size, columns=present):
                table = pa.Table.from_batches([batch])
                _check_utf8(loc, table, first_row=start)
                yield start, table
                start += batch.num_rows
            if start == 0:
                yield 0, parquet.schema_arrow.empty_table().select(present)
    except pa.ArrowInvalid as err:
        raise InputError(f"{loc.url}: cannot be read as Parquet: {err}") from None
    except OSError as err:
        raise InputError(f"{loc.url}: cannot be read as a table: {err}") from None


def _read_json_lines(loc: Location, columns: Optional[Sequence[str]]) -> pa.Table:
    """Arrow's JSON reader; a line longer than its default block is read with a block that holds it."""
    try:
        return _arrow_json(loc, None)
    except pa.ArrowInvalid as err:
        if "straddl" not in str(err):
            _read_json_lines_strictly(loc, columns, err)
    try:
        return _arrow_json(loc, pa_json.ReadOptions(block_size=_block_size_for(loc)))
    except pa.ArrowInvalid as err:
        _read_json_lines_strictly(loc, columns, err)
        raise  # pragma: no cover - the strict reader always raises


def _arrow_json(loc: Location, options: Optional[pa_json.ReadOptions]) -> pa.Table:
    with loc.fs.open(loc.path, "rb") as handle:
        return pa_json.read_json(handle, read_options=options)


def _block_size_for(loc: Location) -> int:
    """A JSON block size that holds the file's longest line (refused, by line, above ``JSON_MAX_LINE_BYTES``)."""
    longest, where = 0, 0
    with loc.fs.open(loc.path, "rb") as handle:
        for number, line in enumerate(handle):
            if len(line) > longest:
                longest, where = len(line), number
    if longest >= JSON_MAX_LINE_BYTES:
        raise InputError(f"{loc.url}: line {where + 1} is {longest:,} bytes; JSON lines longer than "
                         f"{JSON_MAX_LINE_BYTES:,} bytes cannot be read: store such texts in Parquet")
    return max(1 << 20, longest + 1024)


def _check_utf8(loc: Location, table: pa.Table, first_row: int = 0) -> None:
    """Refuse text columns holding invalid UTF-8 (Arrow reads them; Python cannot), naming row (counted from
    ``first_row``) and column."""
    for name in table.column_names:
        column = table.column(name)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        try:
            column.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        for row, value in enumerate(column.cast(pa.large_binary()).to_pylist()):
            try:
                if value is not None:
                    value.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{loc.url}: row {first_row + row}, column {name}: {_utf8_problem(value, err)}") from None


def _utf8_problem(raw: bytes, err: UnicodeDecodeError) -> str:
    return (f"not valid UTF-8 ({err.reason} at byte {err.start}: {raw[max(0, err.start - 10):err.start + 10]!r}); "
            "re-encode the file as UTF-8")


def _read_json_lines_strictly(loc: Location, columns: Optional[Sequence[str]], arrow_error: Exception) -> typing.NoReturn:
    """Re-read JSON lines that Arrow rejected, to name the row and column at fault."""
    rows = []
    with loc.fs.open(loc.path, "rb") as handle:
        for number, raw in enumerate(handle):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{loc.url}: row {len(rows)} (line {number + 1}): {_utf8_problem(raw, err)}") from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise InputError(f"{loc.url}: row {len(rows)} (line {number + 1}): not valid JSON: {err}") from None
    for column in columns or sorted({key for row in rows for key in row}):
        kinds = [(index, type(row.get(column))) for index, row in enumerate(rows) if row.get(column) is not None]
        for index, kind in kinds:
            if kind is not kinds[0][1]:
                raise InputError(
                    f"{loc.url}: row {index}, column {column}: {kind.__name__} value where earlier rows hold "
                    f"{kinds[0][1].__name__} (a {'text' if kinds[0][1] is str else 'column'} must have one type)"
                )
    raise InputError(f"{loc.url}: cannot be read as JSON lines: {arrow_error}")


def read_table(path: str, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """All files of a corpus path as one table (for small inputs: queries, samples)."""
    tables = [read_table_file(loc, columns) for loc in list_table_files(path)]
    return pa.concat_tables(tables, promote_options="default")


def write_parquet(table: pa.Table, loc: Location, **kwargs: Any) -> None:
    """Write one Parquet file (to a temporary name, then moved into place)."""
    loc.fs.makedirs(posixpath.dirname(loc.path), exist_ok=True)
    tmp = f"{loc.path}.tmp-{uuid.uuid4().hex[:8]}"
    with loc.fs.open(tmp, "wb") as handle:
        pq.write_table(table, handle, **kwargs)
    loc.fs.mv(tmp, loc.path)


def write_parquet_row_groups(tables: Sequence[pa.Table], schema: pa.Schema, loc: Location) -> None:
    """Write one Parquet file with one row group per table (to a temporary name, then moved into place)."""
    loc.fs.makedirs(posixpath.dirname(loc.path), exist_ok=True)
    tmp = f"{loc.path}.tmp-{uuid.uuid4().hex[:8]}"
    with loc.fs.open(tmp, "wb") as handle:
        with pq.ParquetWriter(handle, schema) as writer:
            for table in tables:
                writer.write_table(table, row_group_size=max(1, table.num_rows))
    loc.fs.mv(tmp, loc.path)


def is_committed(path: str | Location) -> bool:
    loc = path if isinstance(path, Location) else resolve(path)
    return loc.fs.exists(posixpath.join(loc.path, MANIFEST))


def read_manifest(path: str | Location) -> dict:
    loc = path if isinstance(path, Location) else resolve(path)
    try:
        with loc.fs.open(posixpath.join(loc.path, MANIFEST), "r", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise StorageError(f"{loc.url} is not committed (no {MANIFEST})") from None


def prepare_output(path: str | Location) -> Location:
    """Make ``path`` ready for a new write: refuse a committed directory, clear a partial one."""
    loc = path if isinstance(path, Location) else resolve(path)
    if is_committed(loc):
        raise StorageError(f"{loc.url} is already committed ({MANIFEST} exists); choose a new output path")
    if loc.fs.exists(loc.path):
        loc.fs.rm(loc.path, recursive=True)
    loc.fs.makedirs(loc.path, exist_ok=True)
    return loc


def add_commit_check(check: Callable[[Location], None]) -> None:
    """Run ``check(location)`` before every ``commit`` in this process (a run-directory lease fences its commits)."""
    _commit_checks.append(check)


def remove_commit_check(check: Callable[[Location], None]) -> None:
    if check in _commit_checks:
        _commit_checks.remove(check)


def commit(path: str | Location, manifest: dict) -> None:
    """Commit a directory by writing its manifest last (atomic on S3 and on a local disk).

    Raises:
        StorageError: the directory is already committed, or a commit check refuses (a lost lease).
    """
    loc = path if isinstance(path, Location) else resolve(path)
    for check in list(_commit_checks):
        check(loc)
    if is_committed(loc):
        raise StorageError(f"{loc.url} is already committed; refusing to overwrite its {MANIFEST}")
    body = json.dumps(manifest, indent=2, sort_keys=False, default=str)
    target = posixpath.join(loc.path, MANIFEST)
    if is_local(loc):
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    else:
        loc.fs.pipe_file(target, body.encode("utf-8"))


def write_text(loc: Location, text: str) -> None:
    write_bytes(loc, text.encode("utf-8"))


def write_bytes(loc: Location, data: bytes) -> None:
    loc.fs.makedirs(posixpath.dirname(loc.path), exist_ok=True)
    loc.fs.pipe_file(loc.path, data)


def read_bytes(loc: Location) -> bytes:
    return loc.fs.cat_file(loc.path)
