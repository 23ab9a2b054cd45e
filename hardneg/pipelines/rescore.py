"""Cross-encoder rescoring of search candidates before the miner's filters (RocketQA-style denoising).

A cross-encoder reads (query, passage) together and judges relevance far better than the
bi-encoder's dot product, so candidates it scores as relevant (likely unlabeled positives) can
be dropped by ``max_score`` or the margins. As in sentence-transformers' ``mine_hard_negatives``
with ``cross_encoder=``, the candidates and the (query, positive) pairs are rescored, candidates
are re-ranked by the new score, and every filter and the output scores use it.

Any transformers sequence-classification directory loads, sentence-transformers ``CrossEncoder``
directories included; one logit is squashed by a sigmoid (``CrossEncoder``'s default), several
take the softmax probability of the last label.

On Ray the mine stage can give the cross-encoder its own actor pool (``mine.cross_encoder_actors``; by
default one actor per GPU): the MineActors then hold a ``ScorerPool`` of those actors' handles, with the
same two methods, instead of a model each.

Example::

    scorer = CrossEncoderScorer("/models/ms-marco-MiniLM-L6-v2")
    scorer.score(["what is ray"], ["Ray is a framework for scaling Python."])   # array([0.97], float32)
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch

from hardneg.errors import ConfigError
from hardneg.miners import sort_candidates
from hardneg.search.exact import resolve_device


class CrossEncoderScorer:
    """A local sequence-classification model that scores (query, passage) pairs in batches."""

    def __init__(self, path: str, batch_size: int = 32, max_length: int = 512, device: str = "auto",
                 trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
            model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise ConfigError(f"mine.cross_encoder: cannot load a sequence-classification model from {path}: {err}") from None
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = min(max_length, self.tokenizer.model_max_length)

    @torch.inference_mode()
    def score(self, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        """One float32 relevance score in [0, 1] per (query, passage) pair."""
        out = np.empty(len(queries), dtype=np.float32)
        for lo in range(0, len(queries), self.batch_size):
            hi = lo + self.batch_size
            batch = self.tokenizer(list(queries[lo:hi]), list(passages[lo:hi]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            logits = self.model(**batch).logits.float()
            probs = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)[:, -1]
            out[lo:hi] = probs.cpu().numpy()
        return out

    def rescore_candidates(self, queries: Sequence[str], rows: np.ndarray, corpus_texts) -> tuple[np.ndarray, np.ndarray]:
        """Cross-encoder scores of each query's candidate rows, re-sorted best first (``-1`` rows stay last).

        Args:
            queries: ``q`` query texts.
            rows: ``(q, k)`` candidate corpus rows, ``-1`` padded.
            corpus_texts: a pyarrow string array of the corpus, indexed by row.
        """
        import pyarrow as pa

        query_of, col = np.nonzero(rows >= 0)
        texts = corpus_texts.take(pa.array(rows[query_of, col])).to_pylist()
        scores = np.full(rows.shape, -np.inf, dtype=np.float32)
        scores[query_of, col] = self.score([queries[i] for i in query_of], texts)
        return sort_candidates(rows, scores)


class ScorerPool:
    """``CrossEncoderScorer``'s methods, answered by a pool of ``CrossEncoderScorer`` Ray actors (each call goes
    to the next actor, starting from a random one so many callers spread out)."""

    def __init__(self, actors: Sequence):
        self.actors = list(actors)
        self.turn = random.randrange(len(self.actors))

    def _next(self):
        self.turn = (self.turn + 1) % len(self.actors)
        return self.actors[self.turn]

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        from hardneg.ray_runtime import get

        return get(self._next().score.remote(list(queries), list(passages)))

    def rescore_candidates(self, queries: Sequence[str], rows: np.ndarray, corpus_texts) -> tuple[np.ndarray, np.ndarray]:
        from hardneg.ray_runtime import get

        return get(self._next().rescore_candidates.remote(list(queries), rows, corpus_texts))
