"""Bring your own embeddings: `hardneg mine --corpus-embeddings DIR [--query-embeddings DIR]`.

A user's own vectors (written here with pyarrow, as plain lists) mine the same negatives as the run
that embedded the same vectors; a bad folder is refused at the door, before Ray, naming the file.
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_mine_pipeline import mined_rows, small_corpus

from hardneg.cli import main
from hardneg.search import read_embeddings

TINY_DIM = 32  # tiny_model_path's hidden size


def write_vectors(folder, ids, vectors, files=1, value_type=pa.float32()):
    """``id`` + ``embedding`` (list<float>, not fixed-size) in ``files`` Parquet files, as a user would write them."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, rows in enumerate(np.array_split(np.arange(len(ids)), files)):
        embedding = pa.array([list(map(float, vectors[row])) for row in rows], pa.list_(value_type))
        pq.write_table(pa.table({"id": [ids[row] for row in rows], "embedding": embedding}), folder / f"vectors-{number}.parquet")
    return str(folder)


def mine_args(corpus, queries, run_dir, model, *extra):
    return ["mine", queries, str(run_dir), "--corpus", corpus, "--queries-format", "queries", "--model", model,
            "--num-negatives", "5", "--range-max", "38", *extra]


def negatives_by_pair(run_dir):
    return {(row["query_id"], row["positive_id"]): row["negative_ids"] for row in mined_rows(run_dir)}


def test_own_vectors_mine_the_same_negatives_as_the_embedded_run(ray_session, tiny_model_path, tmp_path):
    corpus, queries = small_corpus(tmp_path)
    assert main(mine_args(corpus, queries, tmp_path / "embedded", tiny_model_path, "--ray-in-process", "always")) == 0
    here = tmp_path / "embedded" / "rounds" / "00000"
    ids, vectors = read_embeddings(str(here / "embeddings"))
    query_ids, query_vectors = read_embeddings(str(here / "query_embeddings"))
    # Another row order, over two files (d0 and d1 share a text, so an equal score: keep their order, which breaks the tie).
    order = np.random.default_rng(0).permutation(len(ids))
    d0, d1 = np.flatnonzero(ids[order] == "d0")[0], np.flatnonzero(ids[order] == "d1")[0]
    if d0 > d1:
        order[[d0, d1]] = order[[d1, d0]]
    own_corpus = write_vectors(tmp_path / "own" / "corpus", ids[order], vectors[order], files=2)
    own_queries = write_vectors(tmp_path / "own" / "queries", query_ids, query_vectors, value_type=pa.float64())

    assert main(mine_args(corpus, queries, tmp_path / "both", tiny_model_path, "--corpus-embeddings", own_corpus,
                          "--query-embeddings", own_queries, "--ray-in-process", "always")) == 0
    # On Ray (the embedded round above ran in process): its query embedding and mining must agree too.
    assert main(mine_args(corpus, queries, tmp_path / "corpus_only", tiny_model_path, "--corpus-embeddings", own_corpus,
                          "--ray-in-process", "never")) == 0

    expected = negatives_by_pair(tmp_path / "embedded")
    assert len(expected) == 29
    assert negatives_by_pair(tmp_path / "both") == expected
    assert negatives_by_pair(tmp_path / "corpus_only") == expected
    both = json.loads((tmp_path / "both" / "rounds" / "00000" / "MANIFEST.json").read_text())
    assert both["inputs"]["corpus_embeddings"].endswith("own/corpus") and both["inputs"]["query_embeddings"].endswith("own/queries")
    assert both["counts"] == {"corpus": 40, "queries": 28, "rows": 29}
    corpus_only = json.loads((tmp_path / "corpus_only" / "rounds" / "00000" / "MANIFEST.json").read_text())
    assert corpus_only["inputs"]["query_embeddings"] is None and corpus_only["model"] == tiny_model_path


def corpus_vectors(dim=TINY_DIM, drop=(), add=()):
    ids = [f"d{i}" for i in range(40) if f"d{i}" not in drop] + list(add)
    return ids, np.random.default_rng(1).normal(size=(len(ids), dim))


def query_vectors(dim=TINY_DIM):
    ids = ["q0", "q1"] + [f"q{i}" for i in range(4, 30)]
    return ids, np.random.default_rng(2).normal(size=(len(ids), dim))


def with_nan(row):
    ids, vectors = corpus_vectors()
    vectors[row, 3] = np.nan
    return ids, vectors


@pytest.mark.parametrize("corpus_rows, query_rows, message", [
    (corpus_vectors(drop=["d5", "d7"]), None, "2 corpus id(s) have no vector ('d5', 'd7'); embed the whole corpus"),
    (corpus_vectors(add=["zz"]), None, "1 id(s) are not in the corpus ('zz'); a negative needs its text"),
    (corpus_vectors(dim=8), None, "holds 8-dim vectors but the model"),
    (corpus_vectors(), query_vectors(dim=16), "holds 16-dim vectors but embed.corpus_embeddings"),
    (corpus_vectors(), (query_vectors()[0][1:], query_vectors()[1][1:]), "1 query id(s) have no vector ('q0')"),
    (with_nan(3), None, "row 3, column embedding: a NaN, infinite or null value"),
])
def test_bad_own_embeddings_are_refused_at_the_door(tiny_model_path, tmp_path, capsys, corpus_rows, query_rows, message):
    corpus, queries = small_corpus(tmp_path)
    extra = ["--corpus-embeddings", write_vectors(tmp_path / "own" / "corpus", *corpus_rows)]
    if query_rows is not None:
        extra += ["--query-embeddings", write_vectors(tmp_path / "own" / "queries", *query_rows)]
    assert main(mine_args(corpus, queries, tmp_path / "run", tiny_model_path, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / "own") in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("columns, message", [
    ({"id": ["d0"], "vector": [[0.0] * TINY_DIM]}, "no column embedding; an embeddings file holds id and embedding"),
    ({"doc": ["d0"], "embedding": [[0.0] * TINY_DIM]}, "no column id; an embeddings file holds id and embedding"),
    ({"id": ["d0", "d1"], "embedding": [[0.0] * TINY_DIM, [0.0] * 3]}, "row 1, column embedding: 3 values where row 0 has 32"),
    ({"id": ["d0"], "embedding": ["x"]}, "column embedding is string; expected a list of floats"),
])
def test_a_malformed_embeddings_file_is_named(tiny_model_path, tmp_path, capsys, columns, message):
    corpus, queries = small_corpus(tmp_path)
    (tmp_path / "own").mkdir()
    pq.write_table(pa.table(columns), tmp_path / "own" / "vectors.parquet")
    assert main(mine_args(corpus, queries, tmp_path / "run", tiny_model_path, "--corpus-embeddings", str(tmp_path / "own"))) == 2
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / "own" / "vectors.parquet") in err
    assert not (tmp_path / "run").exists()
