"""InfoNCE: values worked out by hand on 2-D toys, and equality with sentence-transformers' MNRL."""

import math

import pytest
import torch

from hardneg.errors import ConfigError
from hardneg.trainers.losses import LogitScale, info_nce

E = math.e
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.eye(2)
# Row 0's mined negative points away from its query, row 1's points at query 0.
N = torch.tensor([[[-1.0, 0.0]], [[1.0, 0.0]]])


def test_in_batch_only_matches_hand_value():
    # each row: logits [1, 0] with the positive first -> log(1 + e^-1)
    assert info_nce(Q, P, scale=1.0).item() == pytest.approx(math.log(1 + 1 / E), abs=1e-6)


def test_all_rows_negatives_are_candidates_for_every_query():
    # row 0 sees p0=1, p1=0, n0=-1, n1=1; row 1 sees p0=0, p1=1, n0=0, n1=0
    row0 = -math.log(E / (E + 1 + 1 / E + E))
    row1 = -math.log(E / (E + 3))
    assert info_nce(Q, P, N, scale=1.0).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_own_negatives_only():
    row0 = -math.log(E / (E + 1 + 1 / E))
    row1 = -math.log(E / (E + 2))
    assert info_nce(Q, P, N, scale=1.0, negatives="own").item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_scale_multiplies_similarities():
    assert info_nce(Q, P, scale=2.0).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_symmetric_averages_both_directions():
    positives = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    forward = math.log(2)  # both rows see two equal logits
    # p0 against queries: [1, 0], label 0; p1 against queries: [1, 0], label 1
    backward = (math.log(1 + 1 / E) + math.log(1 + E)) / 2
    value = info_nce(Q, positives, scale=1.0, symmetric=True).item()
    assert value == pytest.approx((forward + backward) / 2, abs=1e-6)


def test_masked_negative_is_the_same_as_no_negative():
    negatives = torch.cat([N, torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]]])], dim=1)
    mask = torch.tensor([[True, False], [True, False]])
    masked = info_nce(Q, P, negatives, scale=1.0, negative_mask=mask)
    assert masked.item() == pytest.approx(info_nce(Q, P, N, scale=1.0).item(), abs=1e-6)


def test_cosine_by_default_dot_product_on_request():
    assert info_nce(Q * 5, P * 3, scale=1.0).item() == pytest.approx(math.log(1 + 1 / E), abs=1e-6)
    assert info_nce(Q * 2, P, scale=1.0, normalize=False).item() == pytest.approx(math.log(1 + E**-2), abs=1e-6)


def test_learnable_scale_gets_a_finite_gradient_with_masked_negatives():
    scaler = LogitScale(temperature=0.05, learnable=True)
    assert scaler().item() == pytest.approx(20.0, rel=1e-6)
    mask = torch.tensor([[True], [False]])
    info_nce(Q, P, N, scale=scaler(), negative_mask=mask).backward()
    assert torch.isfinite(scaler.log_scale.grad)
    assert not LogitScale(0.05).log_scale.requires_grad


def test_bad_arguments_name_the_field():
    with pytest.raises(ConfigError, match="negatives must be one of"):
        info_nce(Q, P, N, negatives="some")
    with pytest.raises(ConfigError, match="train.temperature"):
        LogitScale(0.0)


@pytest.fixture(scope="module")
def tiny_sentence_transformer(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model_path, device="cpu")


def test_equals_sentence_transformers_mnrl(tiny_sentence_transformer):
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    torch.manual_seed(3)
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 2, 8)
    mnrl = MultipleNegativesRankingLoss(tiny_sentence_transformer, scale=20.0)
    expected = mnrl.compute_loss_from_embeddings([q, p, n[:, 0], n[:, 1]], None)
    assert info_nce(q, p, n, scale=20.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_symmetric_equals_mnrl_per_direction(tiny_sentence_transformer):
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    torch.manual_seed(4)
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 1, 8)
    mnrl = MultipleNegativesRankingLoss(
        tiny_sentence_transformer, scale=10.0, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"
    )
    expected = mnrl.compute_loss_from_embeddings([q, p, n[:, 0]], None)
    assert info_nce(q, p, n, scale=10.0, symmetric=True).item() == pytest.approx(expected.item(), rel=1e-5)
