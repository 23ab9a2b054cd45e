"""The run-directory lock: one writer at a time in a run directory, on a local disk or on ``s3://``.

``RUN_DIR/LOCK.json`` is a lease: who holds the directory (``owner`` id, ``host``, ``pid``, ``command``),
since when, its last ``heartbeat`` and its ``ttl``. Every writing command (``run``, ``mine``, ``train``,
``remine``) holds it from its start to its end; a daemon thread renews it every ``ttl / 4``.

- **Taking it.** No lease: it is created, atomically (local: ``os.link`` of a complete file, which fails
  when the name exists; S3: ``PutObject`` with ``If-None-Match: *``).
- **Held by a live writer.** ``RunDirLocked`` (exit 1), naming its host, pid, command and start.
- **Stale** (its heartbeat is older than its own ``ttl``, or it was taken on this host by a process that
  is gone): taken over with a WARNING; only one of several writers that find it stale wins (local:
  re-read and replaced under ``flock`` of the run directory; S3: ``PutObject`` with ``If-Match`` of
  the stale lease's ETag).
- **Renewing and fencing.** A renewal replaces the lease only while it is still this writer's
  (S3: ``If-Match`` of the ETag it wrote). While the lease is held, every ``storage.commit`` under the
  run directory re-reads it first and refuses (``LeaseLost``) once another writer took it over, so a
  writer that stalled past its ttl commits nothing more.
- **Releasing.** At the end, on error too, the lease is deleted if it is still this writer's.

Heartbeats are wall-clock times: hosts that share a run directory need clocks within a few seconds
of each other (NTP), far less than the ttl.

Example::

    with hold_run_dir("s3://bucket/runs/a", ttl=60, command="run"):
        run_round(cfg)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Iterator, Optional

from hardneg import storage
from hardneg.errors import HardnegError, StorageError

logger = logging.getLogger(__name__)

LOCK = "LOCK.json"
DEFAULT_TTL = 60.0


class RunDirLocked(HardnegError):
    """Another live writer holds the run directory; nothing was written. Exit code 1: retry when it ends."""


class LeaseLost(StorageError):
    """This writer's lease was taken over by another writer; it stops without committing."""


@dataclass(frozen=True)
class LeaseRecord:
    """What ``LOCK.json`` holds. Times are Unix seconds (UTC)."""

    owner: str
    host: str
    pid: int
    command: str
    since: float
    heartbeat: float
    ttl: float

    def age(self, now: Optional[float] = None) -> float:
        """Seconds since the last heartbeat."""
        return (time.time() if now is None else now) - self.heartbeat

    def stale_reason(self, now: Optional[float] = None) -> Optional[str]:
        """Why this lease may be taken over, or None while its holder counts as alive."""
        if self.age(now) > self.ttl:
            return f"its last heartbeat was {self.age(now):.0f} s ago (ttl {self.ttl:g} s)"
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return f"its process {self.pid} on this host is gone"
        return None

    def describe(self) -> str:
        return (f"`hardneg {self.command}` on host {self.host}, pid {self.pid}, since {_utc(self.since)} "
                f"(last heartbeat {max(0.0, self.age()):.0f} s ago, ttl {self.ttl:g} s)")

    def to_json(self) -> bytes:
        record = asdict(self)
        record.update(since_utc=_utc(self.since), heartbeat_utc=_utc(self.heartbeat))
        return json.dumps(record, indent=2).encode("utf-8")

    @classmethod
    def from_json(cls, body: bytes) -> "LeaseRecord":
        data = json.loads(body)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class Conflict(Exception):
    """The lease file is not what the caller last read (another writer changed it)."""


class _LocalLeaseFile:
    """``LOCK.json`` on a local disk: created by ``os.link``, read and replaced under ``flock`` of the run directory."""

    def __init__(self, run_dir: storage.Location):
        self.dir = run_dir.path
        self.path = os.path.join(run_dir.path, LOCK)

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        import fcntl

        fd = os.open(self.dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for one read-compare-write, never across a wait
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _read(self) -> Optional[tuple[bytes, str]]:
        try:
            with open(self.path, "rb") as handle:
                body = handle.read()
        except FileNotFoundError:
            return None
        return body, hashlib.sha256(body).hexdigest()

    def read(self) -> Optional[tuple[bytes, str]]:
        """``(body, token)`` of the lease file, or None when there is none."""
        if not os.path.isdir(self.dir):
            return None
        with self._mutex():
            return self._read()

    def _write_new(self, body: bytes) -> str:
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    def create(self, body: bytes) -> str:
        os.makedirs(self.dir, exist_ok=True)
        tmp = self._write_new(body)
        try:
            with self._mutex():
                os.link(tmp, self.path)  # fails if the name exists: an atomic create of a complete file
        except FileExistsError:
            raise Conflict() from None
        finally:
            os.unlink(tmp)
        return hashlib.sha256(body).hexdigest()

    def replace(self, body: bytes, token: str) -> str:
        tmp = self._write_new(body)
        try:
            with self._mutex():
                current = self._read()
                if current is None or current[1] != token:
                    raise Conflict()
                os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return hashlib.sha256(body).hexdigest()

    def delete(self, token: str) -> None:
        with self._mutex():
            current = self._read()
            if current is None or current[1] != token:
                raise Conflict()
            os.unlink(self.path)


class _S3LeaseFile:
    """``LOCK.json`` on S3: conditional ``PutObject`` / ``DeleteObject`` on its ETag."""

    def __init__(self, run_dir: storage.Location):
        self.fs = run_dir.fs
        self.bucket, _, prefix = run_dir.path.partition("/")
        self.key = f"{prefix}/{LOCK}" if prefix else LOCK

    def read(self) -> Optional[tuple[bytes, str]]:
        # ETag first, then the body: the body is at least as new as that ETag, and a takeover
        # conditioned on the ETag fails if anything was written since.
        try:
            etag = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)["ETag"]
            body = self.fs.cat_file(f"{self.bucket}/{self.key}")
        except FileNotFoundError:
            return None
        return body, etag

    def _put(self, body: bytes, **condition: str) -> str:
        try:
            return self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
        except (FileExistsError, FileNotFoundError):
            raise Conflict() from None
        except OSError as err:
            if _is_precondition_failure(err):
                raise Conflict() from None
            raise

    def create(self, body: bytes) -> str:
        return self._put(body, IfNoneMatch="*")

    def replace(self, body: bytes, token: str) -> str:
        return self._put(body, IfMatch=token)

    def delete(self, token: str) -> None:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=token)
        except FileNotFoundError:
            raise Conflict() from None
        except OSError as err:
            if _is_precondition_failure(err):
                raise Conflict() from None
            raise


def _is_precondition_failure(err: OSError) -> bool:
    """s3fs turns 412 Precondition Failed into OSError(EINVAL); 409 ConditionalRequestConflict keeps its code."""
    return err.errno == errno.EINVAL or any(code in str(err) for code in ("PreconditionFailed", "ConditionalRequestConflict"))


class RunDirLease:
    """A held lease on a run directory. Use ``hold_run_dir``; ``acquire`` / ``release`` for finer control.

    Attributes:
        record: the lease as last written by this writer.
        lost: the error that ended it, when another writer took it over.
    """

    def __init__(self, run_dir: str, ttl: float = DEFAULT_TTL, command: str = "run"):
        self.run_dir = storage.resolve(run_dir)
        self.ttl = float(ttl)
        self.command = command
        self.file = _LocalLeaseFile(self.run_dir) if storage.is_local(self.run_dir) else _S3LeaseFile(self.run_dir)
        self.owner = uuid.uuid4().hex
        self.record: Optional[LeaseRecord] = None
        self.lost: Optional[LeaseLost] = None
        self._token: Optional[str] = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._created_dir = storage.is_local(self.run_dir) and not os.path.exists(self.run_dir.path)

    @property
    def url(self) -> str:
        return self.run_dir.join(LOCK).url

    def _new_record(self, since: Optional[float] = None) -> LeaseRecord:
        now = time.time()
        return LeaseRecord(self.owner, socket.gethostname(), os.getpid(), self.command, since or now, now, self.ttl)

    def acquire(self, heartbeat: bool = True) -> "RunDirLease":
        """Take the lease (creating it, or taking over a stale one) and start the heartbeat thread.

        Raises:
            RunDirLocked: a live writer holds it; the message names it.
        """
        record = self._new_record()
        for _ in range(3):  # a lease that vanishes or changes between reading and writing: look again
            current = self.file.read()
            try:
                if current is None:
                    self._token = self.file.create(record.to_json())
                else:
                    self._take_over(current, record)
            except Conflict:
                continue
            self.record = record
            break
        else:
            raise RunDirLocked(f"{self.run_dir.url}: its lock ({LOCK}) changed hands while it was being taken; try again")
        storage.add_commit_check(self._check_commit)
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name=f"hardneg-lease-{self.owner[:8]}", daemon=True)
            self._thread.start()
        logger.info("locked %s (%s, ttl %g s)", self.run_dir.url, self.url, self.ttl)
        return self

    def _take_over(self, current: tuple[bytes, str], record: LeaseRecord) -> None:
        body, token = current
        try:
            holder = LeaseRecord.from_json(body)
        except (ValueError, KeyError, TypeError):
            raise RunDirLocked(f"{self.run_dir.url}: its lock {self.url} cannot be read; if no hardneg command is "
                               "writing into this run directory, delete that file and run again") from None
        reason = holder.stale_reason()
        if reason is None:
            raise RunDirLocked(f"{self.run_dir.url} is locked by another writer: {holder.describe()}. Wait for it to end; "
                               f"if it is gone for good, its lock is taken over once its heartbeat is {holder.ttl:g} s old.")
        self._token = self.file.replace(record.to_json(), token)
        logger.warning("%s: took over a stale lock of %s: %s", self.run_dir.url, holder.describe(), reason)

    def renew(self) -> None:
        """Write a new heartbeat, only while the lease is still this writer's.

        Raises:
            LeaseLost: another writer replaced or removed it.
        """
        with self._lock:
            if self.lost is not None:
                raise self.lost
            record = self._new_record(self.record.since if self.record else None)
            try:
                self._token = self.file.replace(record.to_json(), self._token or "")
            except Conflict:
                self.lost = LeaseLost(self._lost_message())
                raise self.lost from None
            self.record = record

    def _lost_message(self) -> str:
        current = self.file.read()
        holder = "nobody (it was deleted)"
        if current is not None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                holder = LeaseRecord.from_json(current[0]).describe()
        return (f"{self.run_dir.url}: this writer's lock was taken over by {holder}; "
                "stopping without committing anything more (committed stages are kept)")

    def verify(self) -> None:
        """Re-read the lease; raise ``LeaseLost`` if it is not this writer's any more."""
        if self.lost is not None:
            raise self.lost
        current = self.file.read()
        if current is None or current[1] != self._token:
            self.lost = LeaseLost(self._lost_message())
            raise self.lost

    def _check_commit(self, loc: storage.Location) -> None:
        root = self.run_dir.url.rstrip("/")
        if loc.url == root or loc.url.startswith(root + "/"):
            self.verify()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
            except LeaseLost as err:
                logger.error("%s", err)
                return
            except Exception as err:  # a network blip: the next beat tries again, well inside the ttl
                logger.warning("%s: could not renew the lock: %s", self.run_dir.url, err)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still this writer's (a lost one is left alone)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        storage.remove_commit_check(self._check_commit)
        with self._lock:
            if self.lost is None and self._token is not None:
                try:
                    self.file.delete(self._token)
                except Conflict:
                    logger.warning("%s: the lock was not this writer's any more; left it", self.url)
                except OSError as err:  # never mask the command's own outcome: the lease goes stale by itself
                    logger.warning("%s: could not delete the lock (%s); it is taken over once %g s old", self.url, err, self.ttl)
            self._token = None
        if self._created_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self.run_dir.path)  # only when empty: a run that failed before writing leaves nothing

    def __enter__(self) -> "RunDirLease":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


@contextlib.contextmanager
def hold_run_dir(run_dir: str, ttl: float = DEFAULT_TTL, command: str = "run") -> Iterator[RunDirLease]:
    """Hold ``run_dir``'s lease for the ``with`` block: acquired on entry, released on exit (on error too).

    Raises:
        RunDirLocked: another live writer holds it.
        LeaseLost: raised by a commit inside the block after another writer took the lease over.
    """
    lease = RunDirLease(run_dir, ttl, command).acquire()
    try:
        yield lease
    finally:
        lease.release()
