"""sentence-transformers' own scenarios for ``mine_hard_negatives`` (tests/util/test_hard_negatives.py of ST 6.x),
run against ``hardneg.mine_hard_negatives``: the same inputs, arguments and assertions, the packaged MiniLM where
ST uses hub models (``static-retrieval-mrl-en-v1``, ``paraphrase-distilroberta``) and a tiny random BERT
cross-encoder where it uses ``reranker-bert-tiny``.

Scenarios that cannot pass by design are marked here with the reason: ``xfail(strict=True)`` when they run
cheaply, ``skip`` when running them would only spend minutes of mining to fail. Each call is a real Ray round
(about 10-30 s on 2 CPUs), so all but the argument checks and one end-to-end scenario are ``slow``; calls with
the same inputs and mining options share one round (another format is another view of it), as the API does.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from copy import deepcopy

import pytest

from hardneg import mine_hard_negatives

datasets = pytest.importorskip("datasets")
Dataset = datasets.Dataset

QUERIES = [
    "What is the capital of France?",
    "Who wrote the novel 1984?",
    "What is the largest planet in our solar system?",
    "Who painted the Mona Lisa?",
    "What is the speed of light?",
    "What is the chemical symbol for gold?",
    "Who developed the theory of relativity?",
    "What is the tallest mountain in the world?",
]
PASSAGES = [
    "Paris is the capital of France and one of the most populated cities in Europe.",
    "George Orwell wrote the dystopian novel Nineteen Eighty-Four (1984), which was published in 1949.",
    "Jupiter is the largest planet in our solar system and the fifth planet from the sun.",
    "Leonardo da Vinci painted the Mona Lisa between 1503 and 1519.",
    "The speed of light in vacuum is approximately 299,792,458 meters per second.",
    "The chemical symbol for gold is Au, derived from the Latin word 'Aurum'.",
    "Albert Einstein developed the theory of relativity, which revolutionized our understanding of space, time, and gravity.",
    "Mount Everest is the tallest mountain in the world, with a peak that reaches 8,848 meters (29,029 feet) above sea level.",
    # non-matching candidates
    "Madrid is the capital of Spain and its largest city.",
    "J.K. Rowling wrote the Harry Potter series of fantasy novels.",
    "Saturn is the sixth planet from the Sun and the second-largest in the Solar System.",
    "Vincent van Gogh is famous for his post-impressionist paintings like 'Starry Night'.",
    "Sound travels at approximately 343 meters per second in air at standard temperature and pressure.",
    "The chemical symbol for silver is Ag, derived from the Latin word 'Argentum'.",
    "Isaac Newton formulated the laws of motion and universal gravitation.",
    "K2, also known as Mount Godwin-Austen, is the second-highest mountain in the world.",
]
DATASETS = ["dataset", "multiple_positive_dataset", "multiple_positive_queries_dataset", "multiple_positive_passages_dataset"]
FORMATS = ["triplet", "labeled-pair", "n-tuple", "n-tuple-scores", "labeled-list"]

slow = pytest.mark.slow
NOT_A_MODEL_DIR = ("by design: hardneg embeds in Ray actors that load the model from a directory; a duck-typed Python "
                   "object with encode_query/encode_document cannot be shipped to them")


@pytest.fixture(scope="module", autouse=True)
def api_cache(tmp_path_factory):
    """The API's per-process run directories go to the test's temporary folder, not the system's."""
    from hardneg import api

    saved = list(api._PROCESS_CACHE)
    api._PROCESS_CACHE[:] = [str(tmp_path_factory.mktemp("api_cache"))]
    yield
    api._PROCESS_CACHE[:] = saved


@pytest.fixture(scope="session")
def model(ray_session, packaged_model_path):
    """The one model every scenario shares: the packaged all-MiniLM-L6-v2 as a SentenceTransformer object."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(packaged_model_path, device="cpu")


@pytest.fixture(scope="session")
def cross_encoder(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(tiny_cross_encoder, device="cpu")


@pytest.fixture(scope="session")
def dataset():
    return Dataset.from_dict({"query": QUERIES, "passage": PASSAGES[: len(QUERIES)]})


@pytest.fixture(scope="session")
def multiple_positive_queries_dataset():
    return Dataset.from_dict({"query": QUERIES + QUERIES,
                              "passage": [f"Copy {i}, {p}" for i in range(2) for p in PASSAGES[: len(QUERIES)]]})


@pytest.fixture(scope="session")
def multiple_positive_passages_dataset():
    return Dataset.from_dict({"query": [f"Copy {i}, {q}" for i in range(2) for q in QUERIES],
                              "passage": PASSAGES[: len(QUERIES)] * 2})


@pytest.fixture(scope="session")
def multiple_positive_dataset():
    return Dataset.from_dict({"query": QUERIES * 2, "passage": PASSAGES[: len(QUERIES)] * 2})


def similarity(model, query: str, passage: str) -> float:
    """The score ST reports: query and document encoders, normalised, pairwise similarity."""
    q = model.encode_query([query], normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False)
    p = model.encode_document([passage], normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False)
    return model.similarity_pairwise(q, p).item()


def assert_model_score(model, query: str, passage: str, reported: float) -> None:
    assert reported == pytest.approx(similarity(model, query, passage), rel=1e-5, abs=1e-5)


def has_columns(result, *names):
    return all(name in result.column_names for name in names)


# --- argument checks: refused before any Ray work -------------------------------------------------------------


def test_empty_dataset(model):
    with pytest.raises(ValueError):
        mine_hard_negatives(dataset=Dataset.from_dict({"query": [], "passage": []}), model=model, verbose=False)


@pytest.mark.parametrize("num_negatives", [0, -1, -5])
def test_num_negatives_must_be_positive(dataset, model, num_negatives):
    with pytest.raises(ValueError, match=f"num_negatives must be at least 1, got num_negatives={num_negatives}"):
        mine_hard_negatives(dataset=dataset, model=model, num_negatives=num_negatives, verbose=False)


@pytest.mark.parametrize("sampling_strategy", ["top", "random"])
def test_num_negatives_exceeds_range_window(dataset, model, sampling_strategy):
    with pytest.raises(ValueError, match="Cannot mine 10 negatives per query: only 3 candidates remain"):
        mine_hard_negatives(dataset=dataset, model=model, num_negatives=10, range_min=0, range_max=3,
                            sampling_strategy=sampling_strategy, verbose=False)


def test_range_min_must_be_non_negative(dataset, model):
    with pytest.raises(ValueError, match="range_min must be non-negative"):
        mine_hard_negatives(dataset=dataset, model=model, range_min=-5, range_max=8, verbose=False)


@pytest.mark.parametrize(("range_min", "range_max"), [(3, 3), (5, 3)])
def test_range_min_must_be_below_range_max(dataset, model, range_min, range_max):
    with pytest.raises(ValueError, match="range_min must be smaller than range_max"):
        mine_hard_negatives(dataset=dataset, model=model, range_min=range_min, range_max=range_max, verbose=False)


class ControlledNegativeScoreModel:
    """ST's hand-made model (fixed 2-D embeddings, a negative positive score); it has no directory to load."""

    def encode_query(self, texts, **kwargs):
        raise AssertionError("never called: hardneg encodes in Ray actors")

    encode_document = encode_query


@pytest.mark.xfail(strict=True, raises=ValueError, reason=NOT_A_MODEL_DIR)
def test_relative_margin_with_negative_positive_score():
    result = mine_hard_negatives(dataset=Dataset.from_dict({"query": ["q"], "positive": ["p"]}),
                                 model=ControlledNegativeScoreModel(), anchor_column_name="query", positive_column_name="positive",
                                 corpus=["p", "n_more_similar", "n_far"], range_max=2, relative_margin=0.05, num_negatives=1,
                                 output_scores=True, verbose=False)
    positive_score, negative_score = result[0]["scores"]
    assert result[0]["negative"] == "n_far" and negative_score < positive_score


@pytest.mark.xfail(strict=True, raises=ValueError, reason=NOT_A_MODEL_DIR)
def test_range_max_larger_than_corpus_does_not_crash():
    result = mine_hard_negatives(dataset=Dataset.from_dict({"query": ["q"], "positive": ["p"]}),
                                 model=ControlledNegativeScoreModel(), anchor_column_name="query", positive_column_name="positive",
                                 corpus=["p", "n_more_similar", "n_far"], range_max=10, num_negatives=1, use_faiss=False,
                                 output_scores=True, verbose=False)
    assert len(result) == 1 and result[0]["negative"] == "n_more_similar"
    assert result[0]["scores"] == pytest.approx([-0.50, -0.49])


@pytest.mark.xfail(strict=True, raises=ValueError, reason=NOT_A_MODEL_DIR)
def test_missing_negatives_message_names_range_max(capsys):
    mine_hard_negatives(dataset=Dataset.from_dict({"query": ["q"], "positive": ["p"]}), model=ControlledNegativeScoreModel(),
                        anchor_column_name="query", positive_column_name="positive", corpus=["p", "n_more_similar", "n_far"],
                        num_negatives=5, verbose=True)
    assert "Consider adjusting the range_max parameter if" in capsys.readouterr().out


# ST scenarios that observe sentence-transformers' internals, which a hardneg round does not go through.
NOT_PORTABLE = {
    "test_non_faiss_batched_search_matches_single_batch": "the search runs in hardneg's index (torch or faiss) inside the "
    "round, not through SentenceTransformer.similarity, so a spy on model._similarity sees no calls",
    "test_multi_process_pool_stopped_on_encode_failure": "hardneg never calls model.encode_document (Ray actors encode), so a "
    "patched encode_document that raises is never reached and no multi-process pool exists to stop",
    "test_mine_hard_negatives_with_prompt": "the scenario spies on SentenceTransformer.preprocess to see the prompts; hardneg's "
    "Ray actors tokenize (the prompts reach them as model.query_prompt / corpus_prompt, see test_prompts)",
}


@pytest.mark.parametrize("scenario", sorted(NOT_PORTABLE))
def test_not_portable_by_design(scenario):
    pytest.skip(f"by design: {scenario}: {NOT_PORTABLE[scenario]}")


# --- end to end: the default run keeps one ------------------------------------------------------------------


def test_basic_functionality(dataset, model):
    result = mine_hard_negatives(dataset=dataset, model=model, verbose=False)
    assert has_columns(result, "query", "passage", "negative")
    assert len(result) >= len(dataset)


@slow
def test_output_formats(dataset, model):
    triplet = mine_hard_negatives(dataset=dataset, model=model, output_format="triplet", verbose=False)
    assert has_columns(triplet, "query", "passage", "negative") and len(triplet.column_names) == 3
    assert not {"positive_score", "negative_score", "scores"} & set(triplet.column_names)

    triplet_scores = mine_hard_negatives(dataset=dataset, model=model, output_format="triplet", output_scores=True, verbose=False)
    assert has_columns(triplet_scores, "query", "passage", "negative", "scores") and len(triplet_scores.column_names) == 4
    assert not {"positive_score", "negative_score"} & set(triplet_scores.column_names)
    for scores in triplet_scores["scores"]:
        assert isinstance(scores, list) and len(scores) == 2 and all(isinstance(s, (int, float)) for s in scores)

    ntuple = mine_hard_negatives(dataset=dataset, model=model, num_negatives=2, output_format="n-tuple", verbose=False)
    assert has_columns(ntuple, "query", "passage", "negative_1", "negative_2")
    assert not {"score", "scores"} & set(ntuple.column_names)

    for kwargs in ({"output_format": "n-tuple", "output_scores": True}, {"output_format": "n-tuple-scores"}):
        with_scores = mine_hard_negatives(dataset=dataset, model=model, num_negatives=2, verbose=False, **kwargs)
        assert has_columns(with_scores, "query", "passage", "negative_1", "negative_2", "scores")
        assert "score" not in with_scores.column_names
        assert all(len(s) == 3 and all(isinstance(x, (int, float)) for x in s) for s in with_scores["scores"])

    pair = mine_hard_negatives(dataset=dataset, model=model, output_format="labeled-pair", verbose=False)
    assert has_columns(pair, "query", "passage", "label") and "score" not in pair.column_names and len(pair.column_names) == 3
    assert set(pair["label"]) == {0, 1}
    pair_scores = mine_hard_negatives(dataset=dataset, model=model, output_format="labeled-pair", output_scores=True, verbose=False)
    assert has_columns(pair_scores, "query", "passage", "score") and "label" not in pair_scores.column_names
    assert len(pair_scores.column_names) == 3 and all(isinstance(s, (int, float)) for s in pair_scores["score"])

    lists = mine_hard_negatives(dataset=dataset, model=model, output_format="labeled-list", verbose=False)
    assert has_columns(lists, "query", "passage", "labels") and "scores" not in lists.column_names and len(lists.column_names) == 3
    assert all(isinstance(p, list) for p in lists["passage"])
    for labels in lists["labels"]:
        assert labels[0] == 1 and all(label == 0 for label in labels[1:])
    list_scores = mine_hard_negatives(dataset=dataset, model=model, output_format="labeled-list", output_scores=True, verbose=False)
    assert has_columns(list_scores, "query", "passage", "scores") and "labels" not in list_scores.column_names
    assert len(list_scores.column_names) == 3
    assert all(isinstance(s, list) and all(isinstance(x, (int, float)) for x in s) for s in list_scores["scores"])


# --- the rest of ST's scenarios: slow --------------------------------------------------------------------------


@slow
def test_column_names(model):
    renamed = Dataset.from_dict({"question": QUERIES, "answer": PASSAGES[: len(QUERIES)]})
    result = mine_hard_negatives(dataset=renamed, model=model, anchor_column_name="question", positive_column_name="answer",
                                 verbose=False)
    assert has_columns(result, "question", "answer", "negative")


@slow
def test_fully_custom_column_names(model):
    custom = Dataset.from_dict({"user_question": QUERIES, "system_response": PASSAGES[: len(QUERIES)]})
    result = mine_hard_negatives(dataset=custom, model=model, anchor_column_name="user_question",
                                 positive_column_name="system_response", verbose=False)
    assert has_columns(result, "user_question", "system_response", "negative")
    ntuple = mine_hard_negatives(dataset=custom, model=model, anchor_column_name="user_question",
                                 positive_column_name="system_response", num_negatives=2, output_format="n-tuple", verbose=False)
    assert has_columns(ntuple, "user_question", "system_response", "negative_1", "negative_2")


@slow
def test_separate_corpus(dataset, model):
    result = mine_hard_negatives(dataset=dataset, model=model, corpus=PASSAGES[5:], verbose=False)
    assert has_columns(result, "query", "passage", "negative")
    assert any(negative in PASSAGES[5:] for negative in result["negative"])


@slow
def test_cross_encoder(dataset, model, cross_encoder):
    result = mine_hard_negatives(dataset=dataset, model=model, cross_encoder=cross_encoder, max_score=0.8, verbose=False)
    assert has_columns(result, "query", "passage", "negative")


@slow
def test_cross_encoder_detailed(dataset, model, cross_encoder):
    result = mine_hard_negatives(dataset=dataset, model=model, cross_encoder=cross_encoder, range_min=1, max_score=0.7,
                                 min_score=0.2, num_negatives=2, output_format="n-tuple", verbose=False)
    assert has_columns(result, "query", "passage", "negative_1", "negative_2")


@slow
def test_cross_encoder_with_multiple_positives_non_faiss(multiple_positive_dataset, model, cross_encoder):
    result = mine_hard_negatives(dataset=multiple_positive_dataset, model=model, cross_encoder=cross_encoder, max_score=0.9,
                                 num_negatives=2, verbose=False)
    assert has_columns(result, "query", "passage", "negative") and len(result) > 0


@slow
def test_range_parameters(dataset, model):
    result = mine_hard_negatives(dataset=dataset, model=model, range_min=1, range_max=4, verbose=False)
    assert has_columns(result, "query", "passage", "negative")


@slow
def test_score_filters(dataset, model):
    result = mine_hard_negatives(dataset=dataset, model=model, max_score=0.8, min_score=0.1, verbose=False)
    assert has_columns(result, "query", "passage", "negative")


@slow
def test_margin_parameters(dataset, model):
    absolute = mine_hard_negatives(dataset=dataset, model=model, absolute_margin=0.1, verbose=False)
    relative = mine_hard_negatives(dataset=dataset, model=model, relative_margin=0.05, verbose=False)
    assert "negative" in absolute.column_names and "negative" in relative.column_names


@slow
def test_num_negatives(dataset, model):
    result = mine_hard_negatives(dataset=dataset, model=model, num_negatives=2, output_format="n-tuple", verbose=False)
    assert has_columns(result, "negative_1", "negative_2") and "negative_3" not in result.column_names


@slow
def test_sampling_strategies(dataset, model):
    top = mine_hard_negatives(dataset=dataset, model=model, sampling_strategy="top", verbose=False)
    random = mine_hard_negatives(dataset=dataset, model=model, sampling_strategy="random", verbose=False)
    assert "negative" in top.column_names and "negative" in random.column_names


@slow
def test_prompts(dataset, model):
    result = mine_hard_negatives(dataset=dataset, model=model, query_prompt="query: ", corpus_prompt="passage: ", verbose=False)
    assert has_columns(result, "query", "passage", "negative")


@slow
def test_include_positives(dataset, model):
    result = mine_hard_negatives(dataset=dataset, model=model, include_positives=True, output_format="triplet", verbose=False)
    assert "negative_1" in result.column_names


@slow
@pytest.mark.parametrize("include_positives", [False, True])
@pytest.mark.parametrize("mining_kwargs", [{}, {"range_min": 1}, {"range_max": 5}, {"max_score": 0.8}, {"min_score": 0.5},
                                           {"absolute_margin": 0.1}, {"relative_margin": 0.05}, {"margin": 0.1},
                                           {"sampling_strategy": "random"}])
def test_include_positives_warning(dataset, model, caplog, include_positives, mining_kwargs):
    with caplog.at_level(logging.WARNING, logger="hardneg.api"):  # ST's own logger name is sentence_transformers.util.hard_negatives
        mine_hard_negatives(dataset=dataset, model=model, include_positives=include_positives, output_format="n-tuple",
                            verbose=False, **mining_kwargs)
    assert ("may still discard the positive values" in caplog.text) == (include_positives and bool(mining_kwargs))


@slow
def test_include_positives_with_labeled_formats(dataset, model):
    for output_format in ("labeled-pair", "labeled-list"):
        result = mine_hard_negatives(dataset=dataset, model=model, include_positives=True, output_format=output_format, verbose=False)
        assert has_columns(result, "query", "passage", "negative_1", "negative_3")
        for positive, first in zip(result["passage"], result["negative_1"]):
            assert positive == first


@slow
@pytest.mark.parametrize("test_dataset", DATASETS)
def test_triplet_output_scores_match_similarity(request, model, test_dataset):
    result = mine_hard_negatives(dataset=request.getfixturevalue(test_dataset), model=model, output_format="triplet",
                                 output_scores=True, num_negatives=2, verbose=False)
    assert result
    for row in result:
        positive_score, negative_score = row["scores"]
        assert_model_score(model, row["query"], row["passage"], positive_score)
        assert_model_score(model, row["query"], row["negative"], negative_score)


@slow
@pytest.mark.parametrize("kwargs", [{"output_format": "n-tuple", "output_scores": True}, {"output_format": "n-tuple-scores"}],
                         ids=["n-tuple", "n-tuple-scores"])
@pytest.mark.parametrize("test_dataset", DATASETS)
def test_n_tuple_output_scores_match_similarity(request, model, test_dataset, kwargs):
    result = mine_hard_negatives(dataset=request.getfixturevalue(test_dataset), model=model, num_negatives=2, verbose=False, **kwargs)
    assert result
    for row in result:
        assert len(row["scores"]) == 3
        assert_model_score(model, row["query"], row["passage"], row["scores"][0])
        for i in (1, 2):
            assert_model_score(model, row["query"], row[f"negative_{i}"], row["scores"][i])


@slow
@pytest.mark.parametrize("test_dataset", DATASETS)
def test_labeled_pair_output_scores_match_similarity(request, model, test_dataset):
    result = mine_hard_negatives(dataset=request.getfixturevalue(test_dataset), model=model, output_format="labeled-pair",
                                 output_scores=True, verbose=False)
    assert result
    for row in result:
        assert_model_score(model, row["query"], row["passage"], row["score"])


@slow
@pytest.mark.parametrize("test_dataset", DATASETS)
def test_labeled_list_output_scores_match_similarity(request, model, test_dataset):
    result = mine_hard_negatives(dataset=request.getfixturevalue(test_dataset), model=model, output_format="labeled-list",
                                 output_scores=True, verbose=False)
    assert result
    for row in result:
        assert len(row["passage"]) == len(row["scores"])
        for passage, score in zip(row["passage"], row["scores"]):
            assert_model_score(model, row["query"], passage, score)


@slow
def test_batch_size(dataset, model):
    result = mine_hard_negatives(dataset=dataset, model=model, batch_size=2, verbose=False)
    assert has_columns(result, "query", "passage", "negative")


@slow
def test_faiss(dataset, model):
    for _ in range(2):
        result = mine_hard_negatives(dataset=dataset, model=model, use_faiss=True, faiss_batch_size=2, verbose=False)
        assert has_columns(result, "query", "passage", "negative")


@slow
@pytest.mark.xfail(strict=True, reason="by design: cache_folder holds hardneg run directories (run-<hash>/rounds/...), not "
                                       "query_embeddings_*.npy / corpus_embeddings_*.npy files")
def test_cache(dataset, model, tmp_path):
    import os

    cache_dir = os.path.join(tmp_path, "embeddings_cache")
    first = mine_hard_negatives(dataset=dataset, model=model, cache_folder=cache_dir, verbose=False)
    second = mine_hard_negatives(dataset=dataset, model=model, cache_folder=cache_dir, verbose=False)
    assert len(first) == len(second)
    files = os.listdir(cache_dir)
    assert any("query_embeddings" in f for f in files) and any("corpus_embeddings" in f for f in files)


@slow
@pytest.mark.xfail(strict=True, reason="by design: the cache keys on the prompts too, but as run-<hash> directories, not "
                                       "query_embeddings_<hash>.npy files, which is what the assertion lists")
def test_cache_respects_prompt(dataset, model, tmp_path):
    import os

    cache_dir = os.path.join(tmp_path, "embeddings_cache")
    found = []
    for prompt in ("Represent this question for retrieval: ", "Represent this statement for retrieval: "):
        mine_hard_negatives(dataset=dataset, model=model, cache_folder=cache_dir, query_prompt=prompt, verbose=False)
        found.append({f for f in os.listdir(cache_dir) if f.startswith("query_embeddings")})
    assert found[0] != found[1] and found[0] <= found[1]


@slow
def test_multiple_positives_per_query(model):
    duplicated = Dataset.from_dict({"query": QUERIES[:3] + QUERIES[:2], "passage": PASSAGES[:3] + PASSAGES[5:7]})
    result = mine_hard_negatives(dataset=duplicated, model=model, range_max=3, verbose=False)
    assert has_columns(result, "query", "passage", "negative") and len(result) >= len(duplicated)


@slow
def test_faiss_multiple_positives_matches_non_faiss(model):
    duplicated = Dataset.from_dict({"query": QUERIES[:3] + QUERIES[:2], "passage": PASSAGES[:3] + PASSAGES[5:7]})
    kwargs = dict(dataset=duplicated, model=model, num_negatives=3, range_max=3, faiss_batch_size=2, verbose=False)
    assert len(mine_hard_negatives(use_faiss=True, **kwargs)) == len(mine_hard_negatives(use_faiss=False, **kwargs))


def _positives_of(data):
    positives = defaultdict(set)
    for query, positive in zip(data["query"], data["passage"]):
        positives[query].add(positive)
    return positives


@slow
@pytest.mark.parametrize("range_max", [3, 10])
def test_faiss_corpus_smaller_than_k(model, range_max):
    duplicated = Dataset.from_dict({"query": QUERIES[:3] + QUERIES[:1], "passage": PASSAGES[:4]})
    result = mine_hard_negatives(dataset=duplicated, model=model, corpus=PASSAGES[:4], num_negatives=3, range_max=range_max,
                                 use_faiss=True, faiss_batch_size=2, verbose=False)
    positives = _positives_of(duplicated)
    for row in result:
        assert row["negative"] != row["passage"] and row["negative"] not in positives[row["query"]]


@slow
def test_faiss_corpus_smaller_than_k_with_cross_encoder(model, cross_encoder):
    duplicated = Dataset.from_dict({"query": QUERIES[:3] + QUERIES[:1], "passage": PASSAGES[:4]})
    result = mine_hard_negatives(dataset=duplicated, model=model, corpus=PASSAGES[:4], cross_encoder=cross_encoder,
                                 num_negatives=3, range_max=3, absolute_margin=-10.0, use_faiss=True, faiss_batch_size=2,
                                 verbose=False)
    positives = _positives_of(duplicated)
    for row in result:
        assert row["negative"] != row["passage"] and row["negative"] not in positives[row["query"]]


@slow
def test_deprecated_parameters(dataset, model):
    triplet = mine_hard_negatives(dataset=dataset, model=model, range_max=3, as_triplets=True, verbose=False)
    assert "negative" in triplet.column_names and len(triplet.column_names) == 3
    ntuple = mine_hard_negatives(dataset=dataset, model=model, as_triplets=False, range_max=3, num_negatives=2, verbose=False)
    assert has_columns(ntuple, "negative_1", "negative_2")
    with_margin = mine_hard_negatives(dataset=dataset, model=model, range_max=3, margin=0.1, verbose=False)
    assert has_columns(with_margin, "query", "passage", "negative")


@slow
def test_margin_with_default_range_max(dataset, model):
    result = mine_hard_negatives(dataset=dataset, model=model, margin=0.2, verbose=False)
    assert has_columns(result, "query", "passage", "negative") and len(result) > 0


@slow
def test_multi_process(dataset, model, cross_encoder):
    result = mine_hard_negatives(dataset=dataset, model=model, cross_encoder=cross_encoder, num_negatives=2, relative_margin=0.1,
                                 use_multi_process=True, verbose=False)
    assert has_columns(result, "query", "passage", "negative")


@slow
@pytest.mark.xfail(strict=True, reason="by design: hardneg does not apply ST's 2048-document cap of FAISS on GPU to "
                                       "range_max, so no 'range_max was capped to 2047' error is raised")
def test_num_negatives_exceeds_range_window_capped_by_faiss(dataset, model, monkeypatch):
    faiss = pytest.importorskip("faiss")
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    with pytest.raises(ValueError, match="range_max was capped to 2047 because FAISS on GPU"):
        mine_hard_negatives(dataset=dataset, model=model, num_negatives=10, range_min=2040, use_faiss=True, verbose=False)


@slow
def test_use_faiss_on_cpu_is_not_capped(dataset, model, monkeypatch):
    faiss = pytest.importorskip("faiss")
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    monkeypatch.delattr(faiss, "GpuMultipleClonerOptions", raising=False)
    result = mine_hard_negatives(dataset=dataset, model=model, num_negatives=10, range_min=2040, use_faiss=True, verbose=False)
    assert len(result) == 0


@slow
@pytest.mark.parametrize("sampling_strategy", ["top", "random"])
def test_num_negatives_matching_range_window_is_allowed(dataset, model, sampling_strategy):
    result = mine_hard_negatives(dataset=dataset, model=model, num_negatives=3, range_min=0, range_max=3,
                                 sampling_strategy=sampling_strategy, output_format="n-tuple", verbose=False)
    assert len(result.column_names) == 2 + 3 and len(result) == len(dataset)


@slow
@pytest.mark.xfail(strict=True, reason="by design: see test_num_negatives_exceeds_range_window_capped_by_faiss")
def test_range_min_above_faiss_capped_range_max(dataset, model, monkeypatch):
    faiss = pytest.importorskip("faiss")
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    with pytest.raises(ValueError, match="range_min must be smaller than range_max.*range_max was capped to 2047"):
        mine_hard_negatives(dataset=dataset, model=model, range_min=2050, use_faiss=True, verbose=False)


@slow
def test_larger_dataset_with_combinations(model):
    larger = Dataset.from_dict({"query": [f"{q} {i}" for i in range(4) for q in QUERIES], "passage": PASSAGES[: len(QUERIES)] * 4})
    result = mine_hard_negatives(dataset=larger, model=model, range_min=1, range_max=15, max_score=0.9, min_score=0.1,
                                 absolute_margin=0.05, num_negatives=2, output_format="n-tuple", batch_size=4, verbose=False)
    assert has_columns(result, "query", "passage", "negative_1", "negative_2") and "negative_3" not in result.column_names


@slow
def test_prompt_combinations(dataset, model):
    with_prompts = deepcopy(model)
    with_prompts.prompts = {"query_prompt": "Query: ", "passage_prompt": "Passage: "}
    named = mine_hard_negatives(dataset=dataset, model=with_prompts, query_prompt_name="query_prompt",
                                corpus_prompt_name="passage_prompt", verbose=False)
    assert has_columns(named, "query", "passage", "negative")
    mixed = mine_hard_negatives(dataset=dataset, model=with_prompts, query_prompt_name="query_prompt", query_prompt="Direct query: ",
                                corpus_prompt_name="passage_prompt", verbose=False)
    assert has_columns(mixed, "query", "passage", "negative")
    assert "negative_1" not in mixed.column_names and "negative_2" not in mixed.column_names


@slow
def test_n_tuple_scores_format_details(dataset, model):
    result = mine_hard_negatives(dataset=dataset, model=model, num_negatives=2, output_format="n-tuple-scores", verbose=False)
    assert has_columns(result, "query", "passage", "negative_1", "negative_2", "scores") and "score" not in result.column_names
    for scores in result["scores"]:
        assert isinstance(scores, list) and len(scores) == 3
        assert all(scores[0] >= negative for negative in scores[1:])


@slow
def test_tiny_corpus(model):
    tiny = Dataset.from_dict({"query": QUERIES[:2], "passage": PASSAGES[:2]})
    result = mine_hard_negatives(dataset=tiny, model=model, num_negatives=1, range_max=1, verbose=False)
    assert has_columns(result, "query", "passage", "negative")
    assert isinstance(result, Dataset) and len(result) >= 1


@slow
def test_verbose_mode(dataset, model):
    result = mine_hard_negatives(dataset=dataset, model=model, range_max=3, verbose=True)
    assert has_columns(result, "query", "passage", "negative") and len(result) > 0


def _expected_rows(data, output_format, num_negatives):
    unique_pairs = len({tuple(sample.values()) for sample in data})
    if output_format == "triplet":
        return unique_pairs * num_negatives
    if output_format == "labeled-pair":
        return unique_pairs + len(set(data["query"])) * num_negatives
    return unique_pairs


@slow
@pytest.mark.parametrize("output_format", FORMATS)
@pytest.mark.parametrize("test_dataset", DATASETS)
def test_multiple_positives(request, model, output_format, test_dataset):
    data = request.getfixturevalue(test_dataset)
    result = mine_hard_negatives(dataset=data, model=model, num_negatives=3, output_format=output_format, verbose=False)
    assert len({str(sample) for sample in result}) == len(result)
    assert len(result) == _expected_rows(data, output_format, 3)


@slow
@pytest.mark.parametrize("output_format", FORMATS)
@pytest.mark.parametrize("test_dataset", DATASETS)
def test_missing_negatives(capsys, request, model, output_format, test_dataset):
    data = request.getfixturevalue(test_dataset)
    full = len(mine_hard_negatives(data, model=model, output_format=output_format, num_negatives=3, verbose=True))
    assert full == _expected_rows(data, output_format, 3)
    capsys.readouterr()
    result = mine_hard_negatives(data, model=model, max_score=0, range_max=4, output_format=output_format, num_negatives=3,
                                 verbose=True)
    assert len(result) < full
    assert "Could not find enough negatives" in capsys.readouterr().out


@slow
def test_readme_notebook_example_mines_and_trains(ray_session, tmp_path, monkeypatch, capsys):
    """The README's notebook example, run as written: one import swapped, then SentenceTransformerTrainer."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "from hardneg import" in block)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    assert "features: ['question', 'answer', 'negative'], num_rows: 12" in capsys.readouterr().out.replace("\n", "").replace("    ", " ")
    assert (tmp_path / "runs" / "notebook" / "rounds" / "00000" / "MANIFEST.json").exists()
