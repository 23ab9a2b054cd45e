"""A mixed round: for every place, ``mine.geo_negatives`` geographic negatives and the rest by similarity.

Sample4Geo samples GPS neighbours first and similarity neighbours once the encoder is trained;
a mixed round gives both for the same anchors, the places themselves:

1. the places corpus (``id``, ``text``, ``lat``, ``lon``, optional ``group``) is validated as
   places (``load_places``) and as text (``validate_corpus``); the texts are embedded with the
   round's encoder into ``rounds/NNNNN/embeddings/`` (committed, reused when the round resumes);
2. geographic part: ``geo_round``'s mine stage (``mine_places``: the places in ``rounds/NNNNN/places/``,
   the geographic strategy on ``PlaceShard``s) with ``num_negatives = geo_negatives``;
3. similarity part: each place's own embedding is searched in the round's persisted index
   (``rounds/NNNNN/index/``, ``hardneg.pipelines.index``) and
   ``mine_similarity`` picks ``num_negatives`` with the place as its own positive (margins off:
   its score is NaN), same-group and same-text items excluded, and candidates closer than
   ``min_km`` (the same place) dropped before the miner (``removed["same_place"]``);
4. ``merge_negatives``: the geographic ones first, then similarity ones not already taken.

A cross-view corpus (a ``view`` column, Sample4Geo's ground and aerial views) ranks as Sample4Geo's
dynamic similarity sampling does: each place's first view (with ``model.query_prompt``) against the
other places' second views (``view``, with ``model.corpus_prompt``, embedded into
``rounds/NNNNN/view_embeddings/`` and indexed in ``rounds/NNNNN/index/``), so the hard places are those
whose other view looks like this place's first view; candidates whose ``view`` equals the place's own
are the same place and left out. ``figures["similarity_of"]`` says which ranking the round used.

Output, one row per place (``rounds/NNNNN/mined/``): ``query_id``, ``query``, ``negative_ids``,
``negatives``, ``negative_km`` (haversine), ``negative_scores`` (embedding inner product, the
cosine for normalised models, whichever miner chose the negative), ``negative_source``
(``"geographic"`` | ``"similarity"``), ``round``, ``encoder``. ``mine.batches`` composes batches
around the merged negatives, as a geographic round does.
With ``holdout`` (the training loop) a cross-view corpus's held-out places are no anchors and no
candidates (their embeddings, made with the corpus, map to no place); both their views are then embedded
and evaluated with the round's encoder (``hardneg.pipelines.heldout``).

Example::

    cfg = load_config(overrides={"mine.miner": "mixed", "mine.geo_negatives": 2, "mine.num_negatives": 4,
                                 "corpus.path": "cities.jsonl", "mine.min_km": 5})
    manifest = mixed_round(cfg, storage.resolve("runs/mixed/rounds/00000"))
    manifest.figures["by_source"]["similarity"]["negatives"]
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pyarrow as pa

from hardneg import storage
from hardneg.config import CorpusConfig, RunConfig
from hardneg.corpus import validate_corpus
from hardneg.miners import (FILTERS, GEO_REMOVED, GeoResult, MiningResult, drop_same_place, hash_texts, haversine_km,
                            merge_negatives, mine_similarity)
from hardneg.pipelines.embed import EmbedTarget, embed_or_reuse
from hardneg.pipelines.figures import SOURCES, mixed_figures
from hardneg.pipelines.geo import mine_places, place_arrays
from hardneg.pipelines.heldout import evaluate_places_stage, heldout_record, holdout_places
from hardneg.pipelines.index import index_or_reuse
from hardneg.pipelines.mine import search_recall
from hardneg.pipelines.write import kept_rows, places_table, write_place_rows
from hardneg.places import Places, load_places, place_values
from hardneg.rundir import RoundManifest, stage_timing, timing
from hardneg.search import open_index, read_embeddings


def mixed_round(cfg: RunConfig, here: storage.Location, round_index: int = 0, encoder: str = "base",
                holdout: bool = False) -> RoundManifest:
    """Embed, mine (geographic + similarity), merge and write the round folder ``here``; returns its manifest (to commit).

    Args:
        holdout: leave ``train.eval_fraction`` of a cross-view corpus's places out and evaluate on them.
    """
    stages: dict[str, dict] = {}
    started = time.perf_counter()
    every_place = load_places(cfg.corpus)
    places, heldout = holdout_places(every_place, cfg.train) if holdout else (every_place, None)
    corpus = validate_corpus(cfg.corpus)
    stages["read_places"] = stage_timing(started, every_place.table.num_rows)
    embeddings_dir, view_dir = here.join("embeddings"), here.join("view_embeddings")
    cross_view = "view" in places.table.column_names
    targets = [EmbedTarget(embeddings_dir.url, cfg.corpus, corpus, prefix=cfg.model.query_prompt if cross_view else "")]
    if cross_view:
        targets.append(EmbedTarget(view_dir.url, _view_corpus(cfg.corpus, corpus.modality), prefix=cfg.model.corpus_prompt))
    embedded = embed_or_reuse(cfg, targets)
    stages["embed_corpus"] = timing(max(e["seconds"] for e in embedded), sum(e["rows"] for e in embedded))
    embeddings = embedded[0]
    table, vectors, place_of_embedding = _align(places, *read_embeddings(embeddings_dir.url))
    candidates_dir, candidate_vectors = embeddings_dir, vectors
    if cross_view:  # candidates are the places' second views: a place needs both embedded
        table, vectors, candidate_vectors, place_of_embedding = _align_views(table, vectors, *read_embeddings(view_dir.url))
        candidates_dir = view_dir
    lat, lon, groups = place_arrays(table)

    geo = _geographic(cfg, here, table, groups, stages)
    index = index_or_reuse(cfg.index, candidates_dir.url, here.join("index"))
    stages["sim_index"] = timing(index["seconds"], index["rows"])
    similar, depth, recall = _similarity(cfg, here, candidates_dir.url, vectors, place_of_embedding, table, lat, lon, groups, stages)
    started = time.perf_counter()
    merged = merge_negatives(geo.negative_rows, similar.negative_rows, cfg.mine.geo_negatives, cfg.mine.num_negatives)
    present = merged >= 0
    safe = np.where(present, merged, 0)
    anchors = np.arange(len(merged))[:, None]
    km = np.where(present, haversine_km(lat[anchors], lon[anchors], lat[safe], lon[safe]), np.nan)
    scores = np.where(present, np.einsum("qd,qnd->qn", vectors, candidate_vectors[safe]), np.nan)
    from_geo = present & (merged[:, :, None] == geo.negative_rows[:, None, :]).any(axis=2)
    source = np.where(from_geo, SOURCES[0], SOURCES[1])
    mined = places_table(table, merged, round_index, encoder, negative_km=km, negative_scores=scores, negative_source=source)
    keep = kept_rows(cfg, present.sum(axis=1))
    figures = mixed_figures(merged, km, scores, from_geo, geo, similar, int(keep.sum()), places, depth, recall)
    figures["similarity_of"] = "first view -> other places' view" if cross_view else "place -> place"
    stages["merge"] = stage_timing(started, table.num_rows)
    outputs = write_place_rows(cfg, here, mined, merged, keep, (groups, lat, lon),
                               {"miner": "mixed", "round": round_index, "encoder": encoder, "figures": figures}, stages)
    evaluate_places_stage(cfg, here, heldout, figures, stages)
    return RoundManifest(
        miner="mixed", round=round_index, encoder=encoder, model=embeddings["model"], model_hash=embeddings["model_hash"],
        inputs={"corpus": cfg.corpus.path}, config=cfg.model_dump(mode="json"),
        counts={"corpus": table.num_rows + (heldout.num_rows if heldout is not None else 0), "queries": table.num_rows,
                "rows": int(keep.sum())},
        stages=stages, figures=figures, outputs=outputs, heldout=heldout_record(cfg.train, heldout),
    )


def _align(places: Places, ids: np.ndarray, vectors: np.ndarray) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The places that have an embedding, their vectors, and the place row of every embedding row (``-1``: none).

    They differ only with ``corpus.drop_invalid``: a place whose text was dropped is left out (counted
    in ``places.dropped["invalid_text"]``); an embedded row whose coordinates were dropped is no candidate.
    """
    rows = pd.Index(ids).get_indexer(places.table.column("id").to_numpy(zero_copy_only=False))
    table = places.table
    if (rows < 0).any():
        places.dropped["invalid_text"] = int((rows < 0).sum())
        table = table.filter(pa.array(rows >= 0))
        rows = rows[rows >= 0]
    place_of_embedding = np.full(len(ids), -1, np.int64)
    place_of_embedding[rows] = np.arange(len(rows))
    return table, vectors[rows], place_of_embedding


def _view_corpus(corpus_cfg: CorpusConfig, modality: str) -> CorpusConfig:
    """The corpus read for its second views: ``corpus.view_column`` as the text (or, in a corpus of images, the
    image) column, so the embed stage embeds it as it embeds the first."""
    column = {"image_column": corpus_cfg.view_column} if modality == "image" else {"text_column": corpus_cfg.view_column}
    return corpus_cfg.model_copy(update=column)


def _align_views(table: pa.Table, vectors: np.ndarray, view_ids: np.ndarray,
                 view_vectors: np.ndarray) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """The places of ``table`` whose second view has an embedding too: their rows, first-view vectors, second-view
    vectors, and the place row of every second-view embedding row (``-1``: none)."""
    rows = pd.Index(view_ids).get_indexer(table.column("id").to_numpy(zero_copy_only=False))
    have = rows >= 0
    table, vectors, rows = table.filter(pa.array(have)), vectors[have], rows[have]
    place_of_embedding = np.full(len(view_ids), -1, np.int64)
    place_of_embedding[rows] = np.arange(len(rows))
    return table, vectors, view_vectors[rows], place_of_embedding


def _geographic(cfg: RunConfig, here: storage.Location, table: pa.Table, groups: np.ndarray, stages: dict) -> GeoResult:
    """``geo_round``'s miner, the mine stage's geographic strategy, with ``num_negatives = geo_negatives`` (nothing
    to mine for 0)."""
    count = cfg.mine.geo_negatives
    if count == 0:
        return GeoResult(np.full((table.num_rows, 0), -1, np.int64), np.full((table.num_rows, 0), np.nan, np.float32),
                         np.zeros(table.num_rows, np.int64), dict.fromkeys(GEO_REMOVED, 0))
    geo_cfg = cfg.model_copy(update={"mine": cfg.mine.model_copy(update={"num_negatives": count})})
    result, geo_stages = mine_places(geo_cfg, here, table, groups)
    stages.update({f"geo_{name}": stage for name, stage in geo_stages.items()})
    return result


def _similarity(cfg: RunConfig, here: storage.Location, candidates_dir: str, vectors: np.ndarray, place_of_embedding: np.ndarray,
                table: pa.Table, lat: np.ndarray, lon: np.ndarray, groups: np.ndarray, stages: dict) -> tuple[MiningResult, int, object]:
    """``num_negatives`` similarity negatives per place (rows are place rows), the search depth and its recall;
    ``vectors`` (one per place) are searched among the index's vectors (``candidates_dir``)."""
    with open_index(here.join("index").url, cfg.index) as index:
        return _search_and_mine(cfg, index, candidates_dir, vectors, place_of_embedding, table, lat, lon, groups, stages)


def _search_and_mine(cfg: RunConfig, index, embeddings_dir: str, vectors: np.ndarray, place_of_embedding: np.ndarray,
                     table: pa.Table, lat: np.ndarray, lon: np.ndarray, groups: np.ndarray,
                     stages: dict) -> tuple[MiningResult, int, object]:
    """``_similarity``'s batches over an open ``index``."""
    # Equal values are one place seen twice: a candidate is what it shows (its second view, cross-view), an
    # anchor forbids its own (a corpus of images: equal paths or bytes).
    text_hash = hash_texts((table.column("view") if "view" in table.column_names else place_values(table)).to_pylist())
    depth = min(cfg.mine.candidate_depth() + 1, index.ntotal)  # + 1: the place itself comes back first
    num_places, step = len(vectors), cfg.index.query_batch_size
    rows_out = np.full((num_places, cfg.mine.num_negatives), -1, np.int64)
    scores_out = np.full((num_places, cfg.mine.num_negatives), np.nan, np.float32)
    removed = dict.fromkeys(("same_place",) + FILTERS, 0)
    started = time.perf_counter()
    for batch, lo in enumerate(range(0, num_places, step)):
        anchors = np.arange(lo, min(lo + step, num_places))
        scores, found = index.search(vectors[anchors], depth)
        found = np.where(found >= 0, place_of_embedding[np.maximum(found, 0)], -1)
        rows, scores, same_place = drop_same_place(anchors, found, scores, lat, lon, cfg.mine.min_km)
        removed["same_place"] += same_place
        result = mine_similarity(rows, scores, anchors[:, None], np.full(len(anchors), np.nan, np.float32), cfg.mine,
                                 corpus_groups=groups, query_groups=groups[anchors], corpus_text_hash=text_hash,
                                 query_forbidden_hashes=text_hash[anchors, None], seed=cfg.mine.seed + batch)
        rows_out[anchors], scores_out[anchors] = result.negative_rows, result.negative_scores
        for name, count in result.removed.items():
            removed[name] += count
    recall = search_recall(cfg, index, embeddings_dir, vectors, depth)
    stages["sim_mine"] = stage_timing(started, num_places)
    counts = (rows_out >= 0).sum(axis=1)
    return MiningResult(rows_out, scores_out, counts, removed, int((counts < cfg.mine.num_negatives).sum())), depth, recall


