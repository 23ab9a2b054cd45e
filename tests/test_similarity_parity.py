"""Parity with sentence-transformers' mine_hard_negatives on a small real corpus (stdlib docstrings)."""

import ast
import inspect
import os

import numpy as np
import pytest

from hardneg.config import MineConfig
from hardneg.miners import mine_similarity


def docstring_pairs(limit=160):
    """(first line, rest) of stdlib function docstrings: a real, offline corpus of related texts."""
    import argparse, collections, email.message, json.decoder, logging, pathlib, shutil, subprocess, tarfile, textwrap, zipfile  # noqa: E401,E501

    pairs, seen = [], set()
    for module in (argparse, collections, email.message, json.decoder, logging, pathlib, shutil, subprocess, tarfile,
                   textwrap, zipfile, os, inspect, ast):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            doc = ast.get_docstring(node) or ""
            first, _, rest = doc.strip().partition("\n")
            anchor, positive = first.strip(), " ".join(rest.split())
            if len(anchor) < 10 or len(positive) < 20 or anchor in seen or positive in seen:
                continue
            seen.update((anchor, positive))
            pairs.append((anchor, positive))
    return pairs[:limit]


@pytest.mark.parametrize("settings", [
    dict(range_min=0, range_max=20, relative_margin=0.05),
    pytest.param(dict(range_min=2, range_max=30, absolute_margin=0.02, max_score=0.8), marks=pytest.mark.slow),
])
def test_same_negatives_as_sentence_transformers(packaged_model_path, settings):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    pairs = docstring_pairs()
    assert len(pairs) >= 150
    anchors, positives = [a for a, _ in pairs], [p for _, p in pairs]
    model = SentenceTransformer(packaged_model_path, device="cpu")
    mined = mine_hard_negatives(
        Dataset.from_dict({"anchor": anchors, "positive": positives}), model, num_negatives=3,
        sampling_strategy="top", output_format="n-tuple", output_scores=True, use_faiss=False, batch_size=64,
        verbose=False, **settings,
    )

    # Mirror ST: corpus = unique positives, queries embedded apart, exact inner-product top-k.
    corpus = list(dict.fromkeys(positives))
    row_of = {text: row for row, text in enumerate(corpus)}
    corpus_emb = model.encode_document(corpus, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    query_emb = model.encode_query(anchors, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    sims = query_emb @ corpus_emb.T
    depth = settings["range_max"] + 1
    cand = np.argsort(-sims, axis=1, kind="stable")[:, :depth]
    cand_scores = np.take_along_axis(sims, cand, 1).astype(np.float32)
    positive_rows = np.array([[row_of[p]] for p in positives])
    positive_scores = np.take_along_axis(sims, positive_rows, 1)[:, 0]
    ours = mine_similarity(cand, cand_scores, positive_rows, positive_scores,
                           MineConfig(num_negatives=3, sampling_strategy="top", **settings))

    theirs = {row["anchor"]: {row_of[row[f"negative_{i}"]] for i in (1, 2, 3)} for row in mined}
    full = ours.full_mask()
    ours_sets = {anchors[q]: set(ours.negative_rows[q].tolist()) for q in np.flatnonzero(full)}
    union = set(theirs) | set(ours_sets)
    agree = sum(theirs.get(a) == ours_sets.get(a) for a in union)
    assert len(theirs) > 120
    assert agree / len(union) >= 0.99, f"{agree}/{len(union)} queries agree"
