"""Cross-encoder rescoring: scores equal sentence-transformers' CrossEncoder, and the miner filters on them."""

import contextlib

import numpy as np
import pyarrow.json as pajson
import pytest
from conftest import in_process
from test_mine_pipeline import mined_rows, small_corpus

from hardneg.config import parse_config
from hardneg.errors import ConfigError
from hardneg.pipelines.rescore import CrossEncoderScorer
from hardneg.pipelines.run import run_round


def test_scores_equal_sentence_transformers_cross_encoder(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    queries = ["sort a python list", "what is a fixture", "parse json"] * 5
    passages = ["list.sort sorts in place", "pytest fixtures give tests their resources", "json.loads reads a string"] * 5
    ours = CrossEncoderScorer(tiny_cross_encoder, batch_size=4, device="cpu").score(queries, passages)
    theirs = CrossEncoder(tiny_cross_encoder, device="cpu").predict(list(zip(queries, passages)))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


# None: the MineActor loads the cross-encoder itself (run in process here: the same MineActor code, no actors to
# start); 1: on Ray, the MineActor sends its candidates to one cross-encoder actor (ScorerPool).
@pytest.mark.parametrize("actors", [None, 1], ids=["in the MineActor", "in its own actor"])
def test_mining_filters_and_writes_cross_encoder_scores(ray_session, tiny_model_path, tiny_cross_encoder, tmp_path, actors):
    corpus, queries = small_corpus(tmp_path)
    scorer = CrossEncoderScorer(tiny_cross_encoder, device="cpu")
    texts = pajson.read_json(corpus).column("text").to_pylist()
    all_scores = scorer.score(["question 5"] * len(texts), texts)
    cap = float(np.median(all_scores))
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"), "model": {"path": tiny_model_path}, "corpus": {"path": corpus},
        "queries": {"path": queries, "format": "queries"},
        "mine": {"num_negatives": 3, "range_max": 30, "cross_encoder": tiny_cross_encoder, "max_score": cap,
                 "cross_encoder_actors": actors},
    })
    with in_process(cfg) if actors is None else contextlib.nullcontext():
        manifest = run_round(cfg)
    assert manifest["figures"]["scored_by"].startswith("cross-encoder")
    assert manifest["figures"]["cross_encoder_actors"] == (actors or 0)  # unset on a cluster without GPUs: none
    assert manifest["figures"]["removed"]["max_score"] > 0
    rows = mined_rows(tmp_path / "run")
    for row in rows:
        want = scorer.score([row["query"]] * len(row["negatives"]), row["negatives"])
        np.testing.assert_allclose(row["negative_scores"], want, atol=1e-5)
        assert all(score <= cap for score in row["negative_scores"])
        assert row["negative_scores"] == sorted(row["negative_scores"], reverse=True)
        assert row["positive_score"] == pytest.approx(float(scorer.score([row["query"]], [row["positive"]])[0]), abs=1e-5)


def test_a_directory_without_a_classifier_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="mine.cross_encoder: cannot load a sequence-classification model from"):
        CrossEncoderScorer(str(tmp_path))
