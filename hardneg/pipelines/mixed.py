"""The mixed miner's strategy: for every place, ``mine.geo_negatives`` geographic negatives and the rest by similarity.

Sample4Geo samples GPS neighbours first and similarity neighbours once the encoder is trained;
a mixed round gives both for the same anchors, the places themselves. The round over places
(``hardneg.pipelines.geo.PlaceRound``) runs it:

1. ``embed_places``: the places corpus (``id``, ``text``, ``lat``, ``lon``, optional ``group``), validated as
   places and as text (``place_shards.write_places``: a place whose text is bad is refused, or dropped and
   counted in ``dropped_places["invalid"]`` with ``corpus.drop_invalid``) and written to ``rounds/NNNNN/places/``,
   is embedded from there (``place_shards.place_targets``, the rule the held-out eval uses too) with the
   round's encoder into ``rounds/NNNNN/embeddings/`` (committed, reused when the round resumes);
2. the index stage (``place_shards.place_index``): the similarity index (``index.*``) over the places'
   candidate vectors, one shard per range of place rows, built by a Ray task each and committed as
   ``rounds/NNNNN/index/`` (reused when the round resumes);
3. the mine stage (``hardneg.pipelines.mine.run_tasks``, one task per file of ``rounds/NNNNN/places/``):
   each ``PlaceShard`` holds its places' coordinates with their k-d tree, its shard of the index and
   its places' vectors in place-row order. ``mine_mixed_file`` mines a file's places:

   - geographic part: ``geographic_negatives`` with ``num_negatives = geo_negatives``, as a geographic round;
   - similarity part: each place's embedding searched among the places' (``candidate_depth() + 1``: the
     place itself comes back first), candidates closer than ``min_km`` dropped (``removed["same_place"]``),
     then ``mine_similarity`` with the place as its own positive (margins off: its score is NaN),
     same-group and same-text places excluded;
   - ``merge_negatives``: the geographic ones first, then similarity ones not already taken;

   and writes its rows and sends its figures (``hardneg.pipelines.figures.Tally``); with ``mine.batches`` the
   driver keeps each place's merged negatives' rows for the batch stage, as a geographic round keeps its pool.

A cross-view corpus (a ``view`` column, Sample4Geo's ground and aerial views) ranks as Sample4Geo's
dynamic similarity sampling does: each place's first view (with ``model.query_prompt``) against the
other places' second views (``view``, with ``model.corpus_prompt``, embedded into
``rounds/NNNNN/view_embeddings/``), so the hard places are those whose other view looks like this place's
first view; candidates whose ``view`` equals the place's own are the same place and left out.
``figures["similarity_of"]`` says which ranking the round used.

Output, one row per place (``rounds/NNNNN/mined/``): ``query_id``, ``query``, ``negative_ids``,
``negatives``, ``negative_km`` (haversine), ``negative_scores`` (embedding inner product, the
cosine for normalised models, whichever miner chose the negative), ``negative_source``
(``"geographic"`` | ``"similarity"``), ``round``, ``encoder``.
With ``holdout`` (the training loop) a cross-view corpus's held-out places are no anchors and no
candidates (they are not in ``places/``); both their views are then embedded and evaluated with the
round's encoder (``hardneg.pipelines.heldout``).

Example::

    cfg = load_config(overrides={"mine.miner": "mixed", "mine.geo_negatives": 2, "mine.num_negatives": 4,
                                 "corpus.path": "cities.jsonl", "mine.min_km": 5})
    manifest = ordered_round(PlaceRound(cfg, storage.resolve("runs/mixed/rounds/00000")))
    manifest.figures["by_source"]["similarity"]["negatives"]
"""

from __future__ import annotations


import numpy as np

from hardneg import storage
from hardneg.config import RunConfig
from hardneg.miners import FILTERS, GEO_REMOVED, GeoResult, drop_same_place, haversine_km, merge_negatives, mine_similarity
from hardneg.pipelines.embed import embed_or_reuse
from hardneg.pipelines.figures import SOURCES, Tally, per_query_histogram
from hardneg.pipelines.place_shards import geo_stats, geographic_half, place_targets, pool_arrays, task_places, write_place_rows
from hardneg.rundir import timing
from hardneg.search import recall_at_k


def embed_places(cfg: RunConfig, here: storage.Location, stages: dict) -> tuple[dict, dict]:
    """Embed the views of the round's committed ``places/`` (``place_targets``: ``embeddings/``, and
    ``view_embeddings/`` in a cross-view corpus); returns the embeddings' manifest and the ``PlaceShard``s'
    ``similarity`` argument (the shards read the vectors). The places stage checked the views as the corpus
    rules do, so every place of ``places/`` has its vectors; held-out places are not in it, so not embedded."""
    embeddings_dir, view_dir = here.join("embeddings"), here.join("view_embeddings")
    targets = place_targets(cfg, here.join("places"), embeddings_dir.url, view_dir.url)
    embedded = embed_or_reuse(cfg, targets)
    stages["embed"] = timing(max(e["seconds"] for e in embedded), sum(e["rows"] for e in embedded))
    similarity = {"first": embeddings_dir.url, "second": view_dir.url if len(targets) > 1 else None, "cfg": cfg.index}
    return embedded[0], similarity


def mine_mixed_file(plan, shards, scorer, task: int) -> dict:
    """The mixed miner over the places of one file of the round's ``places/``: their rows written (unless
    ``plan.out_dir`` is None); returns their figures (``Tally.result``: counts, per source too, and samples of
    km and scores) and, with ``mine.batches``, the merged negatives' rows for the batch stage (``pool_arrays``)."""
    start, table = task_places(plan, task)
    mine, n = plan.params, table.num_rows
    anchors = np.arange(start, start + n, dtype=np.int64)
    if mine.geo_negatives:
        geo = geographic_half(plan, shards, table, start, mine.model_copy(update={"num_negatives": mine.geo_negatives}))
    else:
        geo = GeoResult(np.full((n, 0), -1, np.int64), np.full((n, 0), np.nan, np.float32), np.zeros(n, np.int64),
                        dict.fromkeys(GEO_REMOVED, 0))
    first = shards.gather("vectors", anchors)[0]
    found_scores, found = shards.similar(first, plan.depth)
    # The miner sees the file's own small corpus: its places and their candidates, numbered in ``known``.
    known = np.unique(np.concatenate([anchors, found[found >= 0]]))
    lat, lon, groups, value_hash = shards.gather("similar_facts", known)
    here = np.searchsorted(known, anchors)
    rows, scores, same_place = drop_same_place(here, np.where(found >= 0, np.searchsorted(known, found), -1), found_scores,
                                               lat, lon, mine.min_km)
    similar = mine_similarity(rows, scores, here[:, None], np.full(n, np.nan, np.float32), mine, corpus_groups=groups,
                              query_groups=groups[here], corpus_text_hash=value_hash, query_forbidden_hashes=value_hash[here, None],
                              seed=mine.seed + start // plan.cfg.index.query_batch_size)
    similar_rows = np.where(similar.negative_rows >= 0, known[np.maximum(similar.negative_rows, 0)], -1)

    merged = merge_negatives(geo.negative_rows, similar_rows, mine.geo_negatives, mine.num_negatives)
    present = merged >= 0
    negative_lat, negative_lon, _ = shards.gather("place_facts", merged[present])
    per_place = present.sum(axis=1)
    km = np.full(merged.shape, np.nan, np.float32)
    km[present] = haversine_km(np.repeat(table.column("lat").to_numpy(), per_place), np.repeat(table.column("lon").to_numpy(), per_place),
                               negative_lat, negative_lon)
    negative_scores = np.full(merged.shape, np.nan, np.float32)
    negative_scores[present] = np.einsum("qd,qd->q", np.repeat(first, per_place, axis=0), shards.gather("vectors", merged[present])[1])
    from_geo = present & (merged[:, :, None] == geo.negative_rows[:, None, :]).any(axis=2)
    keep = write_place_rows(plan, shards, task, start, table, merged, per_place, negative_km=km, negative_scores=negative_scores,
                            negative_source=np.where(from_geo, SOURCES[0], SOURCES[1]))
    samples, by_source = {"negative_km": km[present], "negative_scores": negative_scores[present]}, {}
    for name, mask in zip(SOURCES, (present & from_geo, present & ~from_geo)):
        samples[f"{name}.negative_km"], samples[f"{name}.negative_scores"] = km[mask], negative_scores[mask]
        by_source[name] = int(mask.sum())
    sums = {"geo": geo_stats(geo), "by_source": by_source, "recall": _recall(plan, shards, first, found, start),
            "similarity_removed": {"same_place": same_place, **{name: similar.removed[name] for name in FILTERS}}}
    tally = Tally(mine.num_negatives)
    tally.add(per_query_histogram(per_place, mine.num_negatives), int(keep.sum()), sums=sums, samples=samples)
    return {**tally.result(seed=mine.seed + start), **pool_arrays(plan, merged)}


def _recall(plan, shards, first: np.ndarray, found: np.ndarray, start: int) -> dict:
    """The similarity index's recall against exact search on this file's share of ``index.recall_sample`` places
    (``hits`` summed over tasks, divided by ``queries``; nothing counted for an exact index)."""
    index = plan.similarity
    if index.backend in ("exact", "kdtree") or not index.recall_sample or not len(first):
        return {"hits": 0.0, "queries": 0}
    total = sum(rows for files in plan.files for _, rows in files)
    size = min(len(first), -(-index.recall_sample * len(first) // total))
    pick = np.sort(np.random.default_rng(plan.params.seed + start).choice(len(first), size=size, replace=False))
    _, exact = shards.similar(first[pick], plan.depth, exact=True)
    return {"hits": float(recall_at_k(found[pick], exact)) * size, "queries": int(size)}
