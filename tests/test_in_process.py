"""A laptop-sized round runs in process, without Ray (``ray.in_process``), and answers as the Ray round does.

The in-process round calls the functions the Ray tasks and actors run (read, tokenize, encode and
write a block; build a shard; mine a query file), so the ids must be the same; these tests compare
a fresh process with no Ray at all against the same command on the test session's Ray instance.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import TESTS_DIR, write_jsonl

from hardneg import storage
from hardneg.cli import main
from hardneg.config import parse_config
from hardneg.ray_runtime import in_process, round_executor
from hardneg.search import read_embeddings

REPO = os.path.dirname(TESTS_DIR)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1",
       "HARDNEG_PROGRESS": "0"}


def fresh_process(*argv: str) -> subprocess.CompletedProcess:
    """``hardneg ARGV`` in a new Python process that has never started Ray."""
    done = subprocess.run([sys.executable, "-m", "hardneg.cli", *argv], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def mined_rows(run_dir) -> dict:
    table = storage.read_table(os.path.join(run_dir, "rounds", "00000", "mined"))
    return {(row["query_id"], row["positive_id"]): (row["negative_ids"], row["negative_scores"]) for row in table.to_pylist()}


def test_a_small_round_runs_in_a_fresh_process_without_ray_and_mines_what_the_ray_round_mines(
        ray_session, tiny_model_path, real_pairs, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": p["anchor"], "positive": p["positive"]} for p in real_pairs[:150]])
    # two shards of a faiss index: the in-process round holds both, and checks recall in process too
    options = ["--model", tiny_model_path, "--num-negatives", "3", "--range-max", "20", "--sampling-strategy", "top",
               "--index", "flat", "--index-num-shards", "2", "--index-recall-sample", "50"]

    local = fresh_process("mine", pairs, str(tmp_path / "local"), *options)
    assert "running in process, without Ray" in local.stderr
    assert "Started a local Ray instance" not in local.stderr and "Ray Data" not in local.stderr

    assert main(["mine", pairs, str(tmp_path / "on_ray"), *options]) == 0  # this session's Ray instance is running: Ray

    ours, theirs = mined_rows(tmp_path / "local"), mined_rows(tmp_path / "on_ray")
    assert len(ours) > 100 and ours.keys() == theirs.keys()
    for key, (negative_ids, scores) in theirs.items():
        assert ours[key][0] == negative_ids, key
        np.testing.assert_allclose(ours[key][1], scores, atol=1e-5)
    manifest = storage.read_manifest(storage.resolve(str(tmp_path / "local" / "rounds" / "00000")))
    assert manifest["figures"]["recall"]["recall"] == 1.0  # faiss flat against exact search, checked in process


def test_hardneg_embed_in_a_fresh_process_writes_the_vectors_ray_writes(ray_session, tiny_model_path, real_pairs, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"d{i}", "text": p["positive"]} for i, p in enumerate(real_pairs[:120])])
    local = fresh_process("embed", corpus, str(tmp_path / "local"), "--model", tiny_model_path, "--block-size", "50")
    assert "running in process, without Ray" in local.stderr
    assert main(["embed", corpus, str(tmp_path / "on_ray"), "--model", tiny_model_path]) == 0

    local_ids, local_vectors = read_embeddings(str(tmp_path / "local"))
    ray_ids, ray_vectors = read_embeddings(str(tmp_path / "on_ray"))  # rows length-sorted per block: compare by id
    assert sorted(local_ids) == sorted(ray_ids) == sorted(f"d{i}" for i in range(120))
    np.testing.assert_allclose(local_vectors[np.argsort(local_ids)], ray_vectors[np.argsort(ray_ids)], atol=1e-5)
    assert json.loads((tmp_path / "local" / "MANIFEST.json").read_text())["rows"] == 120


@pytest.mark.parametrize("mode, expected", [("always", True), ("never", False), ("auto", False)])
def test_the_round_executor_runs_in_process_only_where_it_chose_to(ray_session, tmp_path, mode, expected):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": "a", "positive": "b"}])
    cfg = parse_config({"queries": {"path": pairs}, "ray": {"in_process": mode}})
    with round_executor(cfg, [cfg.queries.path]) as local:  # auto: Ray already runs in this process, so Ray
        assert local is expected and in_process() is expected
    assert in_process() is False  # a later round in this process decides again


@pytest.mark.slow  # two fresh processes, about 17 s
def test_the_orchestrators_remine_step_runs_in_a_fresh_process_and_evaluates_the_held_out_queries(
        tiny_model_path, real_pairs, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": p["anchor"], "positive": p["positive"]} for p in real_pairs[:120]])
    run_dir = str(tmp_path / "run")
    fresh_process("mine", pairs, run_dir, "--model", tiny_model_path, "--num-negatives", "2", "--range-max", "20")
    done = fresh_process("remine", run_dir, "--checkpoint", tiny_model_path, "--json")  # a cron step: no Ray either
    assert "running in process, without Ray" in done.stderr and "Started a local Ray instance" not in done.stderr
    manifest = json.loads(done.stdout)
    unique_queries = len({p["anchor"] for p in real_pairs[:120]})
    assert manifest["round"] == 1 and manifest["heldout"]["queries"] == round(0.1 * unique_queries)  # train.eval_fraction
    evaluation = manifest["figures"]["eval"]
    assert evaluation["queries"] == manifest["heldout"]["queries"] and 0.0 <= evaluation["recall@10"] <= 1.0


def test_a_sharded_index_is_built_and_searched_in_process_as_ray_shards_search_it(tmp_path):
    from test_search import persisted, unit, write_embeddings_dir

    from hardneg.config import IndexConfig
    from hardneg.search import exact_search, open_index

    rng = np.random.default_rng(3)
    corpus = np.concatenate([unit(rng, 200), unit(rng, 20)[np.repeat(np.arange(20), 3)]])  # duplicates: ties
    path = write_embeddings_dir(tmp_path / "emb", corpus, files=5)
    _, vectors = read_embeddings(path)
    queries = np.concatenate([unit(rng, 30), vectors[-10:]])
    with round_executor(parse_config({"ray": {"in_process": "always"}}), []):
        with open_index(persisted(path, IndexConfig(num_shards=3), tmp_path / "index"), IndexConfig()) as index:
            assert index.actors == [] and len(index.local) == 3 and index.ntotal == len(corpus)  # no Ray actor
            scores, rows = index.search(queries, 15)
    want_scores, want_rows = exact_search(queries, vectors, 15)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(scores, want_scores)


def test_each_corpus_shard_reads_only_the_corpus_files_its_rows_were_embedded_from(tiny_model_path, real_pairs, tmp_path):
    from hardneg.pipelines.corpus_shards import embedded_from, shard_files
    from hardneg.pipelines.run import run_round
    from hardneg.search import embedding_files, index_manifest

    texts = list(dict.fromkeys(p["positive"] for p in real_pairs))[:60]
    folder = tmp_path / "corpus"
    folder.mkdir()
    for number in range(3):  # three files of 20 passages; embed.part_rows 20: one embed part per file
        write_jsonl(folder / f"{number}.jsonl", [{"id": f"d{i}", "text": texts[i]} for i in range(20 * number, 20 * number + 20)])
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"query_id": f"q{i}", "query": next(p["anchor"] for p in real_pairs
                                                        if p["positive"] == texts[i]), "positive_ids": [f"d{i}"]} for i in range(0, 60, 3)])
    answers = {}
    for shards in (1, 3):
        cfg = parse_config({"run_dir": str(tmp_path / f"run{shards}"), "model": {"path": tiny_model_path},
                            "corpus": {"path": str(folder)}, "queries": {"path": queries, "format": "queries"},
                            "embed": {"part_rows": 20}, "index": {"num_shards": shards}, "ray": {"in_process": "always"},
                            "mine": {"num_negatives": 3, "range_max": 15, "sampling_strategy": "top"}})
        with round_executor(cfg, []):
            run_round(cfg)
        answers[shards] = {key: ids for key, (ids, _) in mined_rows(cfg.run_dir).items()}
    assert len(answers[3]) == 20 and answers[3] == answers[1]  # the shards' texts and groups are the right ones

    from hardneg.corpus import validate_corpus

    here = os.path.join(cfg.run_dir, "rounds", "00000")
    files = embedding_files(os.path.join(here, "embeddings"))
    corpus = validate_corpus(cfg.corpus)
    read = [[loc.path for loc in embedded_from(corpus, shard_files(files, shard)).files]
            for shard in index_manifest(os.path.join(here, "index"))["shards"]]
    assert read == [[str(folder / f"{number}.jsonl")] for number in range(3)]  # one file each, not the whole corpus
