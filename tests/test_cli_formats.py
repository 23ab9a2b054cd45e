"""Output formats and sentence-transformers' semantics through `hardneg mine` (a tiny model where the model's
judgement does not matter, the packaged MiniLM where it picks the nearest text)."""

import pytest

from conftest import write_jsonl
from hardneg import storage
from hardneg.cli import main

QUERIES = ["What is the capital of France?", "Who wrote the novel 1984?", "What is the largest planet in our solar system?"]
ANSWERS = [
    ["Paris is the capital of France.", "France's capital city is Paris, on the Seine."],
    ["George Orwell wrote Nineteen Eighty-Four.", "The novel 1984 is by George Orwell, published in 1949."],
    ["Jupiter is the largest planet in the solar system.", "The biggest planet orbiting the Sun is Jupiter."],
]
EXTRA = [
    {"id": "m1", "text": "Madrid is the capital of Spain."},
    {"id": "m2", "text": "Madrid is the capital of Spain."},  # the same text under a second id
    {"id": "h", "text": "J.K. Rowling wrote the Harry Potter novels."},
    {"id": "s", "text": "Saturn is the second-largest planet in the solar system."},
]


def test_labeled_pairs_keep_the_input_columns_one_row_per_positive_and_per_negative(ray_session, tiny_model_path, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"question": q, "answer": a} for q, two in zip(QUERIES, ANSWERS) for a in two])
    corpus = write_jsonl(tmp_path / "corpus.jsonl", EXTRA)
    out = str(tmp_path / "run")
    args = ["mine", pairs, out, "--model", tiny_model_path, "--corpus", corpus, "--anchor-column", "question",
            "--positive-column", "answer", "--num-negatives", "1", "--format", "labeled-pair",
            "--ray-in-process", "always"]  # the view's shape is the point: the laptop's executor, no Ray actors to start
    assert main(args) == 0

    view = storage.read_table(storage.resolve(out).join("rounds", "00000", "labeled-pair").url)
    assert view.column_names == ["question", "answer", "label"]
    assert view.num_rows == 3 * 2 + 3 * 1  # as ST: each positive once, each query's negative once
    assert sorted(view.column("label").to_pylist()) == [0] * 3 + [1] * 6
    corpus_texts = storage.read_table(storage.resolve(out).join("inputs", "corpus").url).column("text").to_pylist()
    assert corpus_texts.count("Madrid is the capital of Spain.") == 1


@pytest.mark.slow
def test_one_text_under_two_ids_never_fills_two_negative_slots(ray_session, packaged_model_path, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"p{i}", "text": two[0]} for i, two in enumerate(ANSWERS)] + EXTRA)
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"query_id": f"q{i}", "query": q, "positive_ids": [f"p{i}"]}
                                                      for i, q in enumerate(QUERIES)])
    out = str(tmp_path / "run")
    assert main(["mine", queries, out, "--model", packaged_model_path, "--corpus", corpus, "--queries-format", "queries",
                 "--num-negatives", "3", "--range-max", "6", "--format", "triplet", "--output-scores"]) == 0
    mined = storage.read_table(storage.resolve(out).join("rounds", "00000", "mined").url)
    for negatives in mined.column("negatives").to_pylist():
        assert len(negatives) == len(set(negatives)) == 3
    france = mined.filter([q == "q0" for q in mined.column("query_id").to_pylist()])
    assert france.column("negatives").to_pylist()[0][0] == "Madrid is the capital of Spain."
    triplets = storage.read_table(storage.resolve(out).join("rounds", "00000", "triplet-scores").url)  # a view with scores
    assert triplets.column_names == ["anchor", "positive", "negative", "scores"]
    assert triplets.num_rows == 9
