"""Recall@k and nDCG@k on hand-made vectors where the ranking is known."""

import math

import numpy as np
import pytest

from hardneg.errors import InputError
from hardneg.trainers.evaluate import retrieval_metrics, top_k_ids

# Corpus on the unit circle at 0, 30, 60, 90 degrees; query at 0 degrees ranks them 0, 1, 2, 3.
ANGLES = np.radians([0, 30, 60, 90])
CORPUS = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)
QUERY = np.array([[1.0, 0.0]])


def test_top_k_orders_by_inner_product():
    assert top_k_ids(QUERY, CORPUS, 3).tolist() == [[0, 1, 2]]
    assert top_k_ids(QUERY, CORPUS, 10).tolist() == [[0, 1, 2, 3]]


def test_relevant_at_rank_two():
    metrics = retrieval_metrics(QUERY, CORPUS, [{1}], k=2)
    assert metrics == {"recall@2": 1.0, "ndcg@2": pytest.approx(1 / math.log2(3))}


def test_relevant_outside_k_scores_zero():
    assert retrieval_metrics(QUERY, CORPUS, [{3}], k=2) == {"recall@2": 0.0, "ndcg@2": 0.0}


def test_two_relevant_one_found_and_mean_over_queries():
    # query 0: relevant {1, 3}, top-2 = [0, 1] -> recall 1/2, ndcg (1/log2 3) / (1 + 1/log2 3)
    # query 1 (at 90 degrees): relevant {3}, ranked first -> recall 1, ndcg 1
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    metrics = retrieval_metrics(queries, CORPUS, [{1, 3}, {3}], k=2)
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert metrics["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["ndcg@2"] == pytest.approx((ndcg0 + 1.0) / 2)


def test_default_k_is_ten():
    assert set(retrieval_metrics(QUERY, CORPUS, [{0}])) == {"recall@10", "ndcg@10"}


def test_bad_relevance_names_the_rows():
    with pytest.raises(InputError, match=r"query rows \[0\] have no relevant"):
        retrieval_metrics(QUERY, CORPUS, [set()], k=2)
    with pytest.raises(InputError, match="relevant has 2 entries for 1 queries"):
        retrieval_metrics(QUERY, CORPUS, [{0}, {1}], k=2)
