"""InfoNCE over in-batch and mined negatives, with the semantics of sentence-transformers' MNRL.

For row ``i`` the candidates are every row's positive (``P_j``, the in-batch
negatives for ``j != i``) plus mined negatives: with ``negatives="all"`` (the
default, like ``MultipleNegativesRankingLoss``) every row's mined negatives are
candidates for every query; with ``negatives="own"`` only row ``i``'s own.
``symmetric=True`` adds the positive -> query direction (Sample4Geo, CLIP;
MNRL with ``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``)
and averages the two cross-entropies.

Example::

    loss = info_nce(q, p, n, scale=20.0)            # q, p: (B, d); n: (B, N, d) or None
    scaler = LogitScale(temperature=0.05, learnable=True)
    loss = info_nce(q, p, n, scale=scaler())         # CLIP-style learnable scale
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F

from hardneg.errors import ConfigError

NEGATIVE_MODES = ("all", "own")


class LogitScale(torch.nn.Module):
    """``scale = 1 / temperature``, optionally learnable as ``exp(log_scale)`` and clamped (CLIP)."""

    def __init__(self, temperature: float = 0.05, learnable: bool = False, max_scale: float = 100.0):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"train.temperature must be > 0, got {temperature}")
        self.max_scale = max_scale
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)


def _similarities(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b.transpose(-1, -2)


def info_nce(
    query_vecs: torch.Tensor,
    positive_vecs: torch.Tensor,
    negative_vecs: Optional[torch.Tensor] = None,
    scale: Union[float, torch.Tensor] = 20.0,
    symmetric: bool = False,
    negatives: Literal["all", "own"] = "all",
    negative_mask: Optional[torch.Tensor] = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Mean InfoNCE loss of a batch.

    Args:
        query_vecs: ``(B, d)`` query embeddings.
        positive_vecs: ``(B, d)``; row ``i`` is query ``i``'s positive, the others its in-batch negatives.
        negative_vecs: ``(B, N, d)`` mined negatives per row, or ``None`` for in-batch negatives only.
        scale: logits are ``similarity * scale`` (``scale = 1 / temperature``); a tensor keeps its gradient.
        symmetric: also score each positive against all queries and average both directions.
        negatives: ``"all"``: all rows' mined negatives are candidates for every query (MNRL);
            ``"own"``: only the row's own.
        negative_mask: ``(B, N)`` bool, ``False`` where a row has no mined negative in that slot (padding).
        normalize: cosine similarity (MNRL's default); ``False`` for dot product.

    Example::

        q = torch.eye(2); p = torch.eye(2)
        info_nce(q, p, scale=1.0)   # log(1 + e**-1) = 0.3133
    """
    if negatives not in NEGATIVE_MODES:
        raise ConfigError(f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
    if query_vecs.shape != positive_vecs.shape:
        raise ValueError(f"query_vecs {tuple(query_vecs.shape)} and positive_vecs {tuple(positive_vecs.shape)} differ")
    if normalize:
        query_vecs, positive_vecs = F.normalize(query_vecs, dim=-1), F.normalize(positive_vecs, dim=-1)
        if negative_vecs is not None:
            negative_vecs = F.normalize(negative_vecs, dim=-1)
    batch = query_vecs.shape[0]
    labels = torch.arange(batch, device=query_vecs.device)
    similarities, valid = _query_similarities(query_vecs, positive_vecs, negative_vecs, negatives, negative_mask)
    # Mask after scaling: -inf times a learnable scale would give a NaN gradient.
    logits = (similarities * scale).masked_fill(~valid, float("-inf"))
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        backward_logits = _similarities(positive_vecs, query_vecs) * scale
        loss = (loss + F.cross_entropy(backward_logits, labels)) / 2
    return loss


def _query_similarities(query_vecs, positive_vecs, negative_vecs, negatives, negative_mask):
    """``(B, B + M)`` similarities (in-batch positives first, then mined negatives) and where they are valid."""
    in_batch = _similarities(query_vecs, positive_vecs)
    if negative_vecs is None or negative_vecs.shape[1] == 0:
        return in_batch, torch.ones_like(in_batch, dtype=torch.bool)
    batch, per_row, dim = negative_vecs.shape
    mask = negative_mask if negative_mask is not None else torch.ones(batch, per_row, dtype=torch.bool, device=negative_vecs.device)
    if negatives == "own":
        mined = torch.einsum("bd,bnd->bn", query_vecs, negative_vecs)
        mined_valid = mask
    else:
        mined = _similarities(query_vecs, negative_vecs.reshape(batch * per_row, dim))
        mined_valid = mask.reshape(1, batch * per_row).expand(query_vecs.shape[0], -1)
    valid = torch.cat([torch.ones_like(in_batch, dtype=torch.bool), mined_valid.bool()], dim=1)
    return torch.cat([in_batch, mined], dim=1), valid
