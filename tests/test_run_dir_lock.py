"""One writer per run directory: a live holder refuses a second writer, a stale lease is taken over,
a writer that lost its lease commits nothing, and a commit never counts another writer's shards.

Every step is ordered by the lease itself (writer 1 holds it while writer 2 tries), never by timing.
The same tests run on a local directory and on the moto S3 server.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pyarrow as pa
import pytest
from conftest import write_jsonl

from hardneg import storage
from hardneg.cli import main
from hardneg.errors import StorageError
from hardneg.lease import LOCK, Conflict, LeaseLost, LeaseRecord, RunDirLease, RunDirLocked, hold_run_dir

PLACES = [{"id": i, "lat": 40.0 + i / 10, "lon": 10.0 + i / 10, "text": f"place {i}"} for i in range(30)]
GEO_ARGS = ["--miner", "geographic", "--num-negatives", "2", "--max-km", "500", "--sampling-strategy", "top"]


@pytest.fixture(params=["local", "s3"])
def run_dir(request, tmp_path):
    """A fresh run directory: a local folder, or a prefix in the moto bucket (storage pointed at it)."""
    if request.param == "local":
        yield str(tmp_path / "run")
        return
    request.getfixturevalue("s3_storage")
    yield f"s3://hardneg-test/runs/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def endpoint_args(run_dir, request):
    return ["--endpoint-url", request.getfixturevalue("s3_server")] if run_dir.startswith("s3://") else []


def lock_record(run_dir):
    return json.loads(storage.read_text(storage.resolve(run_dir).join(LOCK).url))


def write_lock(run_dir, **fields):
    """A lease as another writer left it (local: written in place; S3: a plain put)."""
    now = time.time()
    record = {"owner": "other", "host": "elsewhere", "pid": 4242, "command": "run", "since": now - 10,
              "heartbeat": now, "ttl": 60.0, **fields}
    storage.write_text(storage.resolve(run_dir).join(LOCK), json.dumps(record))


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- a second writer -------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder_then_runs_once_it_is_released(
        ray_session, run_dir, endpoint_args, tmp_path, capsys):
    places = write_jsonl(tmp_path / "places.jsonl", PLACES)
    first = RunDirLease(run_dir, ttl=60, command="run").acquire()
    holder = lock_record(run_dir)
    assert (holder["host"], holder["pid"], holder["command"]) == (socket.gethostname(), os.getpid(), "run")

    assert main(["mine", places, run_dir, *GEO_ARGS, *endpoint_args]) == 1
    err = capsys.readouterr().err
    assert f"{run_dir} is locked by another writer: `hardneg run` on host {socket.gethostname()}, pid {os.getpid()}, since " in err
    assert not storage.exists(storage.resolve(run_dir).join("run.yaml"))  # the refused writer wrote nothing
    assert lock_record(run_dir)["owner"] == first.owner

    first.release()
    assert not storage.exists(storage.resolve(run_dir).join(LOCK))
    assert main(["mine", places, run_dir, *GEO_ARGS, *endpoint_args]) == 0
    assert storage.is_committed(storage.resolve(run_dir).join("rounds", "00000"))
    assert not storage.exists(storage.resolve(run_dir).join(LOCK))  # released at the end


def test_the_lease_is_released_when_the_command_fails(run_dir):
    with pytest.raises(RuntimeError):
        with hold_run_dir(run_dir, ttl=60, command="run"):
            assert storage.exists(storage.resolve(run_dir).join(LOCK))
            raise RuntimeError("a stage failed")
    assert not storage.exists(storage.resolve(run_dir).join(LOCK))
    RunDirLease(run_dir).acquire().release()  # free for the next writer


def test_a_live_lease_of_another_host_is_refused(run_dir):
    write_lock(run_dir, host="elsewhere", pid=4242, command="train")
    with pytest.raises(RunDirLocked, match=r"locked by another writer: `hardneg train` on host elsewhere, pid 4242, since .*ttl 60 s"):
        RunDirLease(run_dir).acquire()
    assert lock_record(run_dir)["owner"] == "other"


# --- stale leases ----------------------------------------------------------------------------------


def test_a_lease_whose_heartbeat_is_older_than_its_ttl_is_taken_over(run_dir, caplog):
    write_lock(run_dir, heartbeat=time.time() - 3600, ttl=60.0)
    with caplog.at_level(logging.WARNING, logger="hardneg.lease"):
        lease = RunDirLease(run_dir, command="remine").acquire(heartbeat=False)
    assert "took over a stale lock of `hardneg run` on host elsewhere, pid 4242" in caplog.text
    assert "its last heartbeat was 3600 s ago (ttl 60 s)" in caplog.text
    assert lock_record(run_dir)["owner"] == lease.owner
    lease.release()
    assert not storage.exists(storage.resolve(run_dir).join(LOCK))


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(run_dir, caplog):
    pid = dead_pid()
    write_lock(run_dir, host=socket.gethostname(), pid=pid, heartbeat=time.time())
    with caplog.at_level(logging.WARNING, logger="hardneg.lease"):
        lease = RunDirLease(run_dir).acquire(heartbeat=False)
    assert f"its process {pid} on this host is gone" in caplog.text
    lease.release()


def test_of_two_writers_taking_over_one_stale_lease_only_one_wins(run_dir):
    write_lock(run_dir, heartbeat=time.time() - 3600)
    first, second = RunDirLease(run_dir), RunDirLease(run_dir)
    stale_body, stale_token = first.file.read()  # both read the same stale lease ...
    assert second.file.read()[1] == stale_token
    first.file.replace(json.dumps({"owner": "first"}).encode(), stale_token)  # ... the first replaces it
    with pytest.raises(Conflict):  # the second's replace is conditioned on the stale version: it fails
        second.file.replace(json.dumps({"owner": "second"}).encode(), stale_token)
    assert lock_record(run_dir) == {"owner": "first"}


def test_a_second_create_of_the_same_lease_fails(run_dir):
    lease = RunDirLease(run_dir)
    lease.file.create(b'{"owner": "one"}')
    with pytest.raises(Conflict):
        lease.file.create(b'{"owner": "two"}')
    assert lock_record(run_dir) == {"owner": "one"}


# --- renewing and fencing --------------------------------------------------------------------------


def test_renewal_moves_the_heartbeat_and_keeps_the_owner(run_dir):
    lease = RunDirLease(run_dir, ttl=60).acquire(heartbeat=False)
    before = lock_record(run_dir)
    lease.renew()
    after = lock_record(run_dir)
    assert after["owner"] == before["owner"] and after["since"] == before["since"]
    assert after["heartbeat"] >= before["heartbeat"]
    lease.release()


def test_a_writer_whose_stale_lease_was_taken_over_commits_nothing_more(run_dir):
    stalled = RunDirLease(run_dir, ttl=60).acquire(heartbeat=False)
    storage.commit(storage.prepare_output(storage.resolve(run_dir).join("rounds", "00000")), {"kind": "round"})  # while it holds it

    record = LeaseRecord.from_json(json.dumps(lock_record(run_dir)).encode())  # it stalls: its heartbeat ages
    write_lock(run_dir, **{**record.__dict__, "heartbeat": time.time() - 3600})
    taker = RunDirLease(run_dir, command="remine").acquire(heartbeat=False)

    late = storage.prepare_output(storage.resolve(run_dir).join("rounds", "00001"))
    with pytest.raises(LeaseLost, match=r"this writer's lock was taken over by `hardneg remine` on host"):
        storage.commit(late, {"kind": "round"})
    assert not storage.is_committed(storage.resolve(run_dir).join("rounds", "00001"))
    with pytest.raises(LeaseLost):
        stalled.renew()
    stalled.release()  # leaves the taker's lease alone
    assert lock_record(run_dir)["owner"] == taker.owner
    taker.release()


def test_commits_outside_the_run_directory_are_not_fenced(run_dir, tmp_path):
    lease = RunDirLease(run_dir).acquire(heartbeat=False)
    write_lock(run_dir)  # someone else's now
    storage.commit(storage.prepare_output(str(tmp_path / "elsewhere")), {"kind": "other"})
    assert storage.is_committed(str(tmp_path / "elsewhere"))
    lease.release()


# --- commits never count another writer's shards --------------------------------------------------


def embedding_rows(n, offset=0):
    from hardneg.pipelines.embed import embedding_array

    vectors = np.eye(4, dtype=np.float32)[np.arange(n) % 4]
    return pa.table({"id": [f"d{offset + i}" for i in range(n)], "embedding": embedding_array(vectors, "float32")})


def test_a_part_holding_another_writers_shards_is_not_committed(ray_session, tmp_path):
    import ray

    from hardneg.pipelines.embed import write_embeddings

    part = storage.prepare_output(str(tmp_path / "embeddings" / "part-00000"))
    storage.write_parquet(embedding_rows(3), part.join("aother_000000.parquet"))  # the other writer's shard
    with pytest.raises(StorageError, match=r"holds shards this writer did not write \(aother_000000.parquet\)"):
        write_embeddings(ray.data.from_arrow(embedding_rows(5)), part, "amine")
    assert not storage.is_committed(part)

    alone = storage.prepare_output(str(tmp_path / "alone"))
    rows, shards = write_embeddings(ray.data.from_arrow(embedding_rows(5)), alone, "amine")
    assert rows == 5 and shards and all(name.startswith("amine_") for name in shards)


def test_a_committed_part_whose_shards_disagree_with_its_manifest_is_not_whole(tmp_path):
    from hardneg.pipelines.embed import part_is_whole

    part = storage.prepare_output(str(tmp_path / "part-00000"))
    storage.write_parquet(embedding_rows(3), part.join("amine_000000.parquet"))
    storage.commit(part, {"kind": "embeddings-part", "rows": 3, "shards": ["amine_000000.parquet"]})
    assert part_is_whole(part, storage.read_manifest(part))
    storage.write_parquet(embedding_rows(3, 3), part.join("aother_000000.parquet"))  # a second writer's shard lands
    assert not part_is_whole(part, storage.read_manifest(part))


def test_a_reader_refuses_embeddings_whose_rows_disagree_with_the_manifest(tmp_path):
    from hardneg.search import embedding_files

    out = storage.prepare_output(str(tmp_path / "embeddings"))
    storage.write_parquet(embedding_rows(4), out.join("part-00000", "a1_000000.parquet"))
    storage.write_parquet(embedding_rows(4, 4), out.join("part-00000", "a2_000000.parquet"))
    storage.commit(out, {"kind": "embeddings", "rows": 4})
    with pytest.raises(StorageError, match=r"its shards hold 8 rows but its MANIFEST.json says 4"):
        embedding_files(str(out.path))
