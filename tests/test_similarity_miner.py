"""The similarity miner on hand-made candidate lists whose right negatives are known."""

import numpy as np
import pytest

from hardneg.config import MineConfig
from hardneg.errors import InputError
from hardneg.miners import Ragged, hash_texts, mine_similarity, sort_candidates

# One query, corpus rows 10..19 by descending score; its positive is row 10 (score 0.9).
ROWS = np.array([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19]], dtype=np.int64)
SCORES = np.array([[0.9, 0.88, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
POS = [np.array([10])]
POS_SCORE = np.array([0.9], dtype=np.float32)


def mine(params, rows=ROWS, scores=SCORES, positives=POS, positive_scores=POS_SCORE, **kwargs):
    return mine_similarity(rows, scores, positives, positive_scores, params, **kwargs)


def test_num_negatives_takes_the_top_non_positive_candidates():
    result = mine(MineConfig(num_negatives=3))
    assert result.negative_rows.tolist() == [[11, 12, 13]]
    np.testing.assert_allclose(result.negative_scores, [[0.88, 0.8, 0.7]])
    assert result.counts.tolist() == [3]
    assert result.removed["positive"] == 1


def test_range_min_skips_the_first_survivors():
    # ST ranks after filtering: the positive is gone, so range_min=2 skips rows 11 and 12.
    result = mine(MineConfig(num_negatives=2, range_min=2))
    assert result.negative_rows.tolist() == [[13, 14]]
    assert result.removed["range"] == 2


def test_range_max_caps_the_candidate_pool():
    # Pool: the first 3 non-positive candidates (11, 12, 13); the rest are out of range.
    result = mine(MineConfig(num_negatives=2, range_min=1, range_max=3))
    assert result.negative_rows.tolist() == [[12, 13]]
    assert result.removed["range"] == 6 + 1  # 14..19 beyond the pool, 11 below range_min


def test_a_window_smaller_than_num_negatives_is_refused_as_sentence_transformers_does():
    with pytest.raises(ValueError, match="Cannot mine 3 negatives per query: only 2 candidates remain"):
        MineConfig(num_negatives=3, range_min=1, range_max=3)


def test_one_text_under_two_ids_is_one_negative():
    # Rows 11 and 12 hold the same text; the lower-ranked copy never joins the higher one.
    texts = ["p", "dup", "dup", "c", "d", "e", "f", "g", "h", "i"]
    hashes = np.zeros(20, np.uint64)
    hashes[10:] = hash_texts(texts)
    result = mine(MineConfig(num_negatives=3), corpus_text_hash=hashes)
    assert result.negative_rows.tolist() == [[11, 13, 14]]
    assert result.removed["duplicate_text"] == 1


def test_include_positives_keeps_the_positive_first():
    result = mine(MineConfig(num_negatives=2, include_positives=True, format="n-tuple"))
    assert result.negative_rows.tolist() == [[10, 11]]


def test_range_max_ranks_the_survivors_of_the_score_filters():
    # As ST: max_score removes 11 and 12, then the window [0, 4) is over the survivors 13..19.
    result = mine(MineConfig(num_negatives=3, range_max=4, max_score=0.75))
    assert result.negative_rows.tolist() == [[13, 14, 15]]
    assert result.removed["max_score"] == 2 and result.removed["range"] == 3  # 17, 18, 19 beyond the window


def test_max_score_keeps_scores_equal_to_it():
    result = mine(MineConfig(num_negatives=2, max_score=0.8))
    assert result.negative_rows.tolist() == [[12, 13]]
    assert result.removed["max_score"] == 1


def test_min_score_drops_lower_scores():
    result = mine(MineConfig(num_negatives=3, min_score=0.55))
    assert result.negative_rows.tolist() == [[11, 12, 13]]
    result = mine(MineConfig(num_negatives=5, min_score=0.55))
    assert result.negative_rows.tolist() == [[11, 12, 13, 14, -1]]
    assert result.removed["min_score"] == 5


def test_absolute_margin_keeps_score_plus_margin_at_most_positive():
    # ST removes only score + margin > positive: with exact binary fractions, 0.5 + 0.25 == 0.75 stays.
    scores = np.array([[0.9, 0.75, 0.5, 0.25]], np.float32)
    result = mine(MineConfig(num_negatives=2, absolute_margin=0.25), rows=np.array([[10, 11, 12, 13]]), scores=scores,
                  positive_scores=np.array([0.75], np.float32))
    assert result.negative_rows.tolist() == [[12, 13]]  # 0.5 + 0.25 == 0.75 is kept
    assert result.removed["absolute_margin"] == 1


def test_absolute_margin_zero_drops_negatives_above_the_positive():
    result = mine(MineConfig(num_negatives=2, absolute_margin=0.0), positive_scores=np.array([0.8], np.float32))
    assert result.negative_rows.tolist() == [[12, 13]]  # 0.88 > 0.8 removed, 0.8 == 0.8 kept
    assert result.removed["absolute_margin"] == 1


def test_relative_margin_is_nv_retriever_topk_percpos():
    # 0.05: keep score <= 0.9 * 0.95 = 0.855.
    result = mine(MineConfig(num_negatives=2, relative_margin=0.05))
    assert result.negative_rows.tolist() == [[12, 13]]
    assert result.removed["relative_margin"] == 1


def test_relative_margin_with_a_negative_positive_score_lowers_the_threshold():
    scores = np.array([[-0.1, -0.2, -0.25, -0.3]], np.float32)
    # threshold = -0.2 - 0.2 * 0.5 = -0.3 (ST subtracts |pos| * margin).
    result = mine(MineConfig(num_negatives=2, relative_margin=0.5), rows=np.array([[1, 2, 3, 4]]), scores=scores,
                  positives=[[9]], positive_scores=np.array([-0.2], np.float32))
    assert result.negative_rows.tolist() == [[4, -1]]


def test_top_sampling_is_deterministic_and_sorted():
    first = mine(MineConfig(num_negatives=4, sampling_strategy="top"), seed=1)
    second = mine(MineConfig(num_negatives=4, sampling_strategy="top"), seed=2)
    assert first.negative_rows.tolist() == second.negative_rows.tolist() == [[11, 12, 13, 14]]


def many(n_queries=200):
    rows = np.tile(np.arange(10, 20), (n_queries, 1))
    scores = np.tile(SCORES, (n_queries, 1))
    return rows, scores, [[10]] * n_queries, np.full(n_queries, 0.9, np.float32)


def test_random_sampling_is_seeded_varies_by_seed_and_uses_only_survivors():
    rows, scores, positives, positive_scores = many()
    params = MineConfig(num_negatives=3, sampling_strategy="random", range_max=6, max_score=0.85)
    first = mine_similarity(rows, scores, positives, positive_scores, params, seed=7)
    again = mine_similarity(rows, scores, positives, positive_scores, params, seed=7)
    other = mine_similarity(rows, scores, positives, positive_scores, params, seed=8)
    assert np.array_equal(first.negative_rows, again.negative_rows)
    assert not np.array_equal(first.negative_rows, other.negative_rows)
    # 11 goes (max_score); the window is the first 6 survivors: 12..17.
    assert set(np.unique(first.negative_rows)) == {12, 13, 14, 15, 16, 17}
    assert (first.counts == 3).all()
    assert (np.diff(first.negative_scores, axis=1) <= 0).all()  # returned by descending score
    assert len({tuple(row) for row in first.negative_rows}) > 5


def test_random_sampling_is_roughly_uniform():
    rows, scores, positives, positive_scores = many(3000)
    params = MineConfig(num_negatives=1, sampling_strategy="random", range_max=4)
    picked = mine_similarity(rows, scores, positives, positive_scores, params, seed=0).negative_rows[:, 0]
    counts = np.bincount(picked, minlength=20)[11:15] / len(picked)
    np.testing.assert_allclose(counts, 0.25, atol=0.04)


def test_weighted_sampling_follows_softmax_of_scores():
    rows = np.tile(np.array([1, 2, 3]), (4000, 1))
    scores = np.tile(np.array([0.5, 0.4, 0.3], np.float32), (4000, 1))
    params = MineConfig(num_negatives=1, sampling_strategy="weighted", weighted_temperature=0.1)
    picked = mine_similarity(rows, scores, [[9]] * 4000, np.full(4000, 0.9, np.float32), params, seed=3)
    share = np.bincount(picked.negative_rows[:, 0], minlength=4)[1:] / 4000
    expected = np.exp(np.array([5.0, 4.0, 3.0]))
    np.testing.assert_allclose(share, expected / expected.sum(), atol=0.03)
    again = mine_similarity(rows, scores, [[9]] * 4000, np.full(4000, 0.9, np.float32), params, seed=3)
    assert np.array_equal(picked.negative_rows, again.negative_rows)


def test_several_positives_per_query_are_all_excluded():
    rows = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    scores = np.tile(np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32), (2, 1))
    positives = Ragged(offsets=np.array([0, 2, 5]), values=np.array([1, 3, 5, 4, 3]))
    result = mine_similarity(rows, scores, positives, np.array([0.9, 0.9], np.float32), MineConfig(num_negatives=2))
    assert result.negative_rows.tolist() == [[2, 4], [2, 1]]
    assert result.removed["positive"] == 5
    same = mine_similarity(rows, scores, [[1, 3], [5, 4, 3]], np.array([0.9, 0.9]), MineConfig(num_negatives=2))
    assert np.array_equal(same.negative_rows, result.negative_rows)


def test_items_of_the_query_group_are_never_negatives():
    corpus_groups = np.full(20, -1)
    corpus_groups[[11, 13]] = 4
    corpus_groups[12] = 5
    result = mine(MineConfig(num_negatives=2), corpus_groups=corpus_groups, query_groups=np.array([4]))
    assert result.negative_rows.tolist() == [[12, 14]]
    assert result.removed["group"] == 2
    # A query without group (-1) keeps rows without group.
    result = mine(MineConfig(num_negatives=2), corpus_groups=corpus_groups, query_groups=np.array([-1]))
    assert result.negative_rows.tolist() == [[11, 12]]


def test_candidates_with_a_positive_or_query_text_are_false_negatives():
    texts = [f"text {i}" for i in range(20)]
    texts[11] = "the positive"  # same text as the positive, another row
    texts[13] = "the query"
    corpus_hash = hash_texts(texts)
    forbidden = [hash_texts(["the positive", "the query"])]
    result = mine(MineConfig(num_negatives=2), corpus_text_hash=corpus_hash, query_forbidden_hashes=forbidden)
    assert result.negative_rows.tolist() == [[12, 14]]
    assert result.removed["duplicate_text"] == 2
    kept = mine(MineConfig(num_negatives=2, exclude_duplicate_texts=False), corpus_text_hash=corpus_hash,
                query_forbidden_hashes=forbidden)
    assert kept.negative_rows.tolist() == [[11, 12]]


def test_short_queries_are_counted_and_padded():
    rows = np.array([[1, 2, -1, -1], [1, 2, 3, 4]])
    scores = np.array([[0.9, 0.5, -np.inf, -np.inf], [0.9, 0.5, 0.4, 0.3]], np.float32)
    result = mine_similarity(rows, scores, [[1], [1]], np.array([0.9, 0.9]), MineConfig(num_negatives=3))
    assert result.negative_rows.tolist() == [[2, -1, -1], [2, 3, 4]]
    assert np.isnan(result.negative_scores[0, 1:]).all()
    assert result.counts.tolist() == [1, 3]
    assert result.short_queries == 1
    assert result.full_mask().tolist() == [False, True]


def test_removed_counts_each_candidate_once_in_filter_order():
    corpus_groups = np.full(20, -1)
    corpus_groups[[10, 11]] = 1  # 10 is the positive: counted as positive, not group
    params = MineConfig(num_negatives=2, range_min=1, range_max=6, max_score=0.75, min_score=0.45)
    result = mine(params, corpus_groups=corpus_groups, query_groups=np.array([1]))
    # positive: 10; group: 11; max_score: 12; min_score: 16..19; survivors 13, 14, 15: range_min drops 13.
    assert result.removed == {"positive": 1, "group": 1, "duplicate_text": 0, "absolute_margin": 0,
                              "relative_margin": 0, "max_score": 1, "min_score": 4, "range": 1}
    assert result.negative_rows.tolist() == [[14, 15]]
    assert sum(result.removed.values()) + result.counts.sum() == (ROWS >= 0).sum()


def test_unsorted_candidates_are_rejected_with_the_query_named():
    rows = np.array([[1, 2], [3, 4]])
    scores = np.array([[0.9, 0.8], [0.1, 0.7]], np.float32)
    with pytest.raises(InputError, match="query 1 are not sorted"):
        mine_similarity(rows, scores, [[9], [9]], np.array([1.0, 1.0]), MineConfig(num_negatives=1))
    sorted_rows, sorted_scores = sort_candidates(rows, scores)
    assert sorted_rows.tolist() == [[1, 2], [4, 3]]
    result = mine_similarity(sorted_rows, sorted_scores, [[9], [9]], np.array([1.0, 1.0]), MineConfig(num_negatives=1))
    assert result.negative_rows.tolist() == [[1], [4]]


def test_text_ids_and_held_out_ranks_are_blake2b_digests_stable_across_versions():
    """One hash serves texts, pairs input's content ids and the held-out rank: 8 bytes of blake2b read big-endian.
    A run directory made by an earlier hardneg keeps its ids (``t`` + the digest's hex) and its held-out split."""
    import hashlib

    from hardneg.config import TrainConfig
    from hardneg.pipelines.heldout import heldout_ids
    from hardneg.pipelines.inputs import text_id

    assert text_id("the query") == "t" + hashlib.blake2b(b"the query", digest_size=8).hexdigest()
    assert text_id(b"\x89PNG") == "t" + hashlib.blake2b(b"\x89PNG", digest_size=8).hexdigest()  # an image's bytes as they are
    assert hash_texts(["the query"])[0] == int(hashlib.blake2b(b"the query", digest_size=8).hexdigest(), 16)
    ids = [f"q{i}" for i in range(50)]
    rank = {qid: hashlib.blake2b(f"7:{qid}".encode(), digest_size=8).digest() for qid in ids}
    assert heldout_ids(ids, TrainConfig(eval_fraction=0.2, seed=7)) == set(sorted(ids, key=rank.get)[:10])
