"""Search backends: exact torch vs brute force, faiss, sharded Ray actors == unsharded, recall, errors."""

import os

import numpy as np
import pyarrow as pa
import pytest

from hardneg import storage
from hardneg.config import IndexConfig
from hardneg.errors import ConfigError, StorageError
from hardneg.pipelines.embed import embedding_array
from hardneg.pipelines.index import build_index_dir, index_or_reuse
from hardneg.search import build_index, exact_search, exact_search_files, load_index, open_index, read_embeddings, recall_at_k


def unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng, n, d=32, centers=20):
    c = unit(rng, centers, d)
    x = c[rng.integers(0, centers, n)] + 0.15 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(queries, corpus, k):
    scores = queries @ corpus.T
    order = np.lexsort((np.broadcast_to(np.arange(len(corpus)), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), order


def write_embeddings_dir(path, vectors, files=3):
    """A committed embeddings folder as the embed stage writes it: id + fixed-size-list embedding shards."""
    out = storage.prepare_output(str(path))
    for i, part in enumerate(np.array_split(np.arange(len(vectors)), files)):
        table = pa.table({"id": [f"doc{j}" for j in part], "embedding": embedding_array(vectors[part], "float32")})
        storage.write_parquet(table, out.join(f"part-{i:05d}.parquet"))
    storage.commit(out, {"kind": "embeddings", "rows": len(vectors)})
    return str(path)


def persisted(embeddings, cfg, out):
    """The index folder the index stage builds from ``embeddings``."""
    build_index_dir(cfg, embeddings, storage.resolve(str(out)))
    return str(out)


@pytest.mark.parametrize("k, chunk", [(5, 7), (10, 1000), (60, 13)])
def test_exact_equals_brute_force(k, chunk):
    rng = np.random.default_rng(0)
    corpus, queries = unit(rng, 50), unit(rng, 9)
    scores, rows = exact_search(queries, corpus, k, chunk_size=chunk)
    want_scores, want_rows = brute(queries, corpus, min(k, 50))
    assert rows.shape == (9, k)
    np.testing.assert_array_equal(rows[:, :50], want_rows)
    np.testing.assert_allclose(scores[:, :50], want_scores, atol=1e-6)
    if k > 50:  # past the corpus: -1 rows, -inf scores
        assert (rows[:, 50:] == -1).all() and np.isneginf(scores[:, 50:]).all()


def test_exact_ties_go_to_the_lower_row_across_chunks():
    corpus = np.repeat(np.eye(4, dtype=np.float32), 5, axis=0)  # rows 0-4 equal, 5-9 equal, ...
    _, rows = exact_search(np.eye(4, dtype=np.float32)[[2]], corpus, k=3, chunk_size=3)
    assert rows.tolist() == [[10, 11, 12]]


def test_faiss_flat_equals_exact_and_approximate_indexes_reach_recall():
    rng = np.random.default_rng(1)
    corpus, queries = clustered(rng, 4000), clustered(rng, 100)
    _, exact_rows = exact_search(queries, corpus, 10)
    _, flat_rows = build_index(corpus, IndexConfig(backend="flat")).search(queries, 10)
    assert recall_at_k(flat_rows, exact_rows) == 1.0
    for cfg in (IndexConfig(backend="ivf", nprobe=32), IndexConfig(backend="hnsw"), IndexConfig(backend="ivfpq", pq_m=8, nprobe=32)):
        index = build_index(corpus, cfg)
        _, rows = index.search(queries, 10)
        floor = 0.6 if cfg.backend == "ivfpq" else 0.9
        assert recall_at_k(rows, exact_rows) >= floor, cfg.backend
        _, again = load_index(index.to_bytes(), cfg).search(queries, 10)
        np.testing.assert_array_equal(again, rows)


def test_ivfpq_rejects_a_sub_quantizer_count_that_does_not_divide_the_dimension():
    corpus = unit(np.random.default_rng(2), 500, 30)
    with pytest.raises(ConfigError, match="index.pq_m=16 must divide the embedding dimension 30"):
        build_index(corpus, IndexConfig(backend="ivfpq", pq_m=16))


@pytest.mark.parametrize("shards", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_sharded_search_equals_unsharded_exact(ray_session, tmp_path, shards):
    rng = np.random.default_rng(3)
    corpus = np.concatenate([unit(rng, 200), unit(rng, 20)[np.repeat(np.arange(20), 3)]])  # duplicates: ties
    path = write_embeddings_dir(tmp_path / "emb", corpus, files=5)
    ids, vectors = read_embeddings(path)
    queries = np.concatenate([unit(rng, 30), vectors[-10:]])
    want_scores, want_rows = exact_search(queries, vectors, 15)
    index = open_index(persisted(path, IndexConfig(num_shards=shards), tmp_path / "index"), IndexConfig())
    try:
        assert len(index.actors) == shards and index.ntotal == len(corpus)
        scores, rows = index.search(queries, 15)
    finally:
        index.close()
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(scores, want_scores)
    assert len(set(ids)) == len(corpus)


def test_an_uncommitted_embeddings_or_index_folder_is_refused(ray_session, tmp_path):
    (tmp_path / "emb").mkdir()
    with pytest.raises(StorageError, match="not a committed embeddings folder"):
        build_index_dir(IndexConfig(), str(tmp_path / "emb"), storage.resolve(str(tmp_path / "index")))
    with pytest.raises(StorageError, match="not a committed index folder"):
        open_index(str(tmp_path / "emb"), IndexConfig())


@pytest.mark.gpu
def test_cuda_fp16_exact_matches_cpu():
    rng = np.random.default_rng(4)
    corpus, queries = clustered(rng, 20000, 64), clustered(rng, 200, 64)
    _, cpu_rows = exact_search(queries, corpus, 10)
    _, gpu_rows = exact_search(queries, corpus, 10, device="cuda", dtype="float16")
    assert recall_at_k(gpu_rows, cpu_rows) >= 0.99


def test_a_killed_shard_actor_reloads_its_shard_and_answers_the_same_and_a_closed_index_releases_its_actors(ray_session, tmp_path):
    import os
    import signal

    import ray
    from faults import actors_of

    from hardneg.search import Index

    rng = np.random.default_rng(5)
    path = write_embeddings_dir(tmp_path / "emb", unit(rng, 300), files=4)
    queries = unit(rng, 20)
    with open_index(persisted(path, IndexConfig(num_shards=2), tmp_path / "index"), IndexConfig()) as index:
        assert isinstance(index, Index)
        want = index.search(queries, 10)
        # This index's actors, by id: a closed index's actors from an earlier test may not be marked dead yet.
        actors = list(index.actors)
        mine = {handle._actor_id.hex() for handle in actors}
        alive = [a for a in actors_of("ShardActor", "ALIVE") if a["actor_id"] in mine]
        assert len(alive) == 2
        os.kill(alive[0]["pid"], signal.SIGKILL)
        got = index.search(queries, 10)
        restarted = [a for a in actors_of("ShardActor") if a["actor_id"] == alive[0]["actor_id"]]
    assert restarted[0]["restarts"] >= 1
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    # Closed (the with block): the index has let its actors go, the restarted one too.
    assert index.actors == []
    for actor in actors:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.ntotal.remote())


@pytest.mark.parametrize("backend", ["exact", "flat", "hnsw", "kdtree"])
def test_every_in_process_backend_is_an_index_and_a_context_manager(backend):
    from hardneg.search import Index

    corpus = unit(np.random.default_rng(6), 40, 3)
    with build_index(corpus, IndexConfig(backend=backend)) as index:
        assert isinstance(index, Index)
        _, rows = index.search(corpus[:2], 1)
    assert rows.tolist() == [[0], [1]]


@pytest.mark.parametrize("cfg, files", [
    (IndexConfig(), ["shard-00000.npy"]),
    (IndexConfig(backend="hnsw", num_shards=2), ["shard-00000.faiss", "shard-00001.faiss"]),
])
def test_the_index_stage_persists_one_file_a_shard_and_loads_to_the_same_answers(ray_session, tmp_path, cfg, files):
    rng = np.random.default_rng(9)
    corpus = unit(rng, 400)
    path = write_embeddings_dir(tmp_path / "emb", corpus, files=4)
    out = storage.resolve(str(tmp_path / "index"))
    manifest = index_or_reuse(cfg, path, out)
    assert sorted(name for name in os.listdir(out.path) if name != "MANIFEST.json") == files
    assert [s["file"] for s in manifest["shards"]] == files and manifest["rows"] == 400
    assert sum(s["rows"] for s in manifest["shards"]) == 400 and manifest["backend"] == cfg.backend
    queries = unit(rng, 25)
    with open_index(out.url, IndexConfig()) as first:
        want = first.search(queries, 12)
    with open_index(out.url, IndexConfig()) as second:
        got = second.search(queries, 12)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    if cfg.backend == "exact":
        np.testing.assert_array_equal(want[1], exact_search(queries, corpus, 12)[1])


def test_a_committed_index_is_reused_not_rebuilt(ray_session, tmp_path):
    path = write_embeddings_dir(tmp_path / "emb", unit(np.random.default_rng(10), 50), files=2)
    out = storage.resolve(str(tmp_path / "index"))
    first = index_or_reuse(IndexConfig(), path, out)
    stamp = os.stat(os.path.join(out.path, "shard-00000.npy")).st_mtime_ns
    assert index_or_reuse(IndexConfig(backend="hnsw"), path, out) == first
    assert os.stat(os.path.join(out.path, "shard-00000.npy")).st_mtime_ns == stamp


def test_exact_search_over_embedding_files_equals_in_memory_exact(tmp_path):
    rng = np.random.default_rng(11)
    corpus = np.concatenate([unit(rng, 90), unit(rng, 10)[np.repeat(np.arange(10), 2)]])  # ties across files
    path = write_embeddings_dir(tmp_path / "emb", corpus, files=3)
    queries = np.concatenate([unit(rng, 5), corpus[-4:]])
    got = exact_search_files(path, queries, 7, chunk_size=16)
    want = exact_search(queries, corpus, 7)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)


def test_exact_search_keeps_the_lowest_rows_of_scores_tied_at_the_kth_in_every_chunk():
    """Integer vectors make exact, plentiful ties: within each chunk and across chunks the rows kept are the
    lowest of those tied at the k-th score, as a stable sort by (score, row) keeps them."""
    rng = np.random.default_rng(5)
    corpus = rng.integers(-2, 3, size=(500, 8)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(60, 8)).astype(np.float32)
    for k, chunk in ((7, 64), (1, 500), (40, 37), (500, 128)):
        scores, rows = exact_search(queries, corpus, k, chunk_size=chunk)
        want_scores, want_rows = brute(queries, corpus, k)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(scores, want_scores)
