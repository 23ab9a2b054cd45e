"""The mine pipeline end to end: inputs -> embed -> index -> mine -> committed round, views, CLI, bad input."""

import json
import os

import pyarrow.parquet as pq
import pytest
from conftest import in_process, write_jsonl

from hardneg import storage
from hardneg.cli import main
from hardneg.config import parse_config
from hardneg.errors import InputError
from hardneg.pipelines.inputs import prepare_inputs
from hardneg.pipelines.run import round_dir, run_round
from hardneg.pipelines.views import view_table


def mined_rows(run_dir, round_index=0):
    return storage.read_table(round_dir(str(run_dir), round_index).join("mined").url).to_pylist()


def small_corpus(tmp_path):
    """Doc d0's text is duplicated by d1; d2/d3 share d0's group; the rest are distinct."""
    docs = [
        {"id": "d0", "text": "how to sort a list in python", "group": "g0"},
        {"id": "d1", "text": "how to sort a list in python", "group": "g1"},
        {"id": "d2", "text": "sorting lists with sorted and key functions", "group": "g0"},
        {"id": "d3", "text": "list.sort sorts in place and returns None", "group": "g0"},
    ] + [{"id": f"d{i}", "text": f"unrelated passage number {i} about topic {i % 7}", "group": f"g{i}"} for i in range(4, 40)]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    queries = write_jsonl(tmp_path / "queries.jsonl", [
        {"query_id": "q0", "query": "sort a python list", "positive_ids": ["d0"]},
        {"query_id": "q1", "query": "passage about topic 3", "positive_ids": ["d10", "d17"]},
    ] + [{"query_id": f"q{i}", "query": f"question {i}", "positive_ids": [f"d{i}"]} for i in range(4, 30)])
    return corpus, queries


def test_queries_with_ids_exclude_positives_groups_and_duplicate_texts(ray_session, tiny_model_path, tmp_path):
    corpus, queries = small_corpus(tmp_path)
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"), "model": {"path": tiny_model_path},
        "corpus": {"path": corpus}, "queries": {"path": queries, "format": "queries"},
        "mine": {"num_negatives": 5, "range_max": 38},
    })
    with in_process(cfg):
        manifest = run_round(cfg)

    rows = mined_rows(tmp_path / "run")
    by_query = {}
    for row in rows:
        by_query.setdefault(row["query_id"], []).append(row)
    assert len(rows) == 29 and len(by_query) == 28  # q1 has two positives -> two rows, same negatives
    assert [r["positive_id"] for r in by_query["q1"]] == ["d10", "d17"]
    assert by_query["q1"][0]["negative_ids"] == by_query["q1"][1]["negative_ids"]
    for row in rows:
        assert len(row["negative_ids"]) == 5 and row["round"] == 0 and row["encoder"] == "base"
        assert row["negative_scores"] == sorted(row["negative_scores"], reverse=True)
    q0 = set(by_query["q0"][0]["negative_ids"])
    assert not q0 & {"d0", "d1", "d2", "d3"}  # positive, its duplicate text, its group
    assert not {"d10", "d17"} & set(by_query["q1"][0]["negative_ids"])
    assert manifest["figures"]["negatives_equal_to_positive_text"] == 0
    assert manifest["figures"]["removed"]["duplicate_text"] >= 1 and manifest["figures"]["removed"]["group"] >= 1
    assert manifest["counts"] == {"corpus": 40, "queries": 28, "rows": 29}
    assert json.loads((tmp_path / "run" / "rounds" / "00000" / "MANIFEST.json").read_text())["round"] == 0


@pytest.mark.slow  # the default run stays under 8 minutes (issue 11)
def test_rerun_resumes_committed_stages_and_redoes_a_partial_one(ray_session, tiny_model_path, tmp_path):
    corpus, queries = small_corpus(tmp_path)
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"), "model": {"path": tiny_model_path},
        "corpus": {"path": corpus}, "queries": {"path": queries, "format": "queries"}, "mine": {"num_negatives": 2},
    })
    first = run_round(cfg)
    assert run_round(cfg) == first  # a committed round is returned as it is

    here = tmp_path / "run" / "rounds" / "00000"
    embed_manifest = (here / "embeddings" / "MANIFEST.json").read_text()
    index_manifest = (here / "index" / "MANIFEST.json").read_text()
    index_stamp = (here / "index" / "shard-00000.npy").stat().st_mtime_ns
    (here / "MANIFEST.json").unlink()
    (here / "mined" / "MANIFEST.json").unlink()  # as if the driver died while writing mined/
    (here / "mined" / "part-000000000000.parquet").write_bytes(b"half a file")  # the first part's name
    again = run_round(cfg)
    assert (here / "embeddings" / "MANIFEST.json").read_text() == embed_manifest  # not re-embedded
    assert (here / "index" / "MANIFEST.json").read_text() == index_manifest  # the persisted index is reused
    assert (here / "index" / "shard-00000.npy").stat().st_mtime_ns == index_stamp
    assert again["counts"] == first["counts"]
    first_part = sorted((here / "mined").glob("part-*.parquet"))[0]
    assert first_part.name == "part-000000000000.parquet"
    assert mined_rows(tmp_path / "run")[0]["negative_ids"] == pq.read_table(first_part).to_pylist()[0]["negative_ids"]

    (here / "MANIFEST.json").unlink()  # an unfinished round, resumed after the queries file changed
    with open(queries, "a") as handle:
        handle.write('{"query_id": "q99", "query": "one more", "positive_ids": ["d1"]}\n')
    with pytest.raises(InputError, match=r"was prepared from other inputs than this run's \(.*queries.jsonl changed\)"):
        run_round(cfg)


@pytest.mark.slow  # the default run stays under 8 minutes (issue 11)
def test_on_short_drop_and_keep(ray_session, tiny_model_path, tmp_path):
    corpus, queries = small_corpus(tmp_path)
    base = {"model": {"path": tiny_model_path}, "corpus": {"path": corpus}, "queries": {"path": queries, "format": "queries"}}
    # 40 docs: 37 negatives leave only q0 short (its positive, the duplicate text and two group mates are out).
    keep = run_round(parse_config({**base, "run_dir": str(tmp_path / "keep"), "mine": {"num_negatives": 37, "range_max": 40}}))
    drop = run_round(parse_config({**base, "run_dir": str(tmp_path / "drop"),
                                   "mine": {"num_negatives": 37, "range_max": 40, "on_short": "drop"}}))
    assert keep["figures"]["short_queries"] == 1 and keep["counts"]["rows"] == 29
    assert len(mined_rows(tmp_path / "keep")[0]["negative_ids"]) == 36
    assert drop["counts"]["rows"] == 28
    assert "q0" not in {r["query_id"] for r in mined_rows(tmp_path / "drop")}


def test_pairs_match_sentence_transformers_mine_hard_negatives(ray_session, packaged_model_path, real_pairs, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    pairs = [{"anchor": p["anchor"], "positive": p["positive"]} for p in real_pairs[:200]]
    # A pair repeated 15 times: ST counts every row of an anchor in max_positives, which widens every
    # query's candidate window (range_max + max_positives), repeated rows included.
    pairs += [pairs[0]] * 15
    settings = dict(range_min=0, range_max=25, relative_margin=0.05, num_negatives=3, sampling_strategy="top")
    theirs = mine_hard_negatives(
        Dataset.from_list(pairs), SentenceTransformer(packaged_model_path, device="cpu"), output_format="n-tuple",
        use_faiss=False, batch_size=64, verbose=False, **settings,
    )
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "queries": {"path": write_jsonl(tmp_path / "pairs.jsonl", pairs)},
                        "mine": {**settings, "format": "n-tuple"}})
    with in_process(cfg):  # the negatives are the point; test_in_process checks the Ray round mines the same
        manifest = run_round(cfg)
    ours = storage.read_table(manifest["outputs"]["n-tuple"]).to_pylist()

    def as_sets(rows):
        return {(r["anchor"], r["positive"]): {r[f"negative_{i}"] for i in (1, 2, 3)} for r in rows}

    theirs, ours = as_sets(theirs), as_sets(ours)
    union = set(theirs) | set(ours)
    agree = sum(theirs.get(key) == ours.get(key) for key in union)
    assert len(ours) > 150 and agree / len(union) >= 0.99, f"{agree}/{len(union)} pairs agree"
    assert json.loads((tmp_path / "run" / "inputs" / "queries" / "MANIFEST.json").read_text())["pairs_per_anchor"] == 16


@pytest.mark.slow  # the default run stays under 8 minutes (issue 11)
def test_views_load_in_sentence_transformers_trainer(ray_session, tiny_model_path, real_pairs, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"path": tiny_model_path},
                        "queries": {"path": write_jsonl(tmp_path / "pairs.jsonl", real_pairs[:60])},
                        "mine": {"num_negatives": 2, "format": "triplet"}})
    manifest = run_round(cfg)
    mined = storage.read_table(manifest["outputs"]["mined"])
    triplets = storage.read_table(manifest["outputs"]["triplet"])
    assert triplets.column_names == ["anchor", "positive", "negative"]
    assert triplets.num_rows == sum(len(n) for n in mined.column("negatives").to_pylist())
    ntuple = view_table(mined, "n-tuple", 2)
    assert ntuple.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    labeled = view_table(mined, "labeled-pair", 2).to_pylist()
    first = mined.slice(0, 1).to_pylist()[0]
    assert labeled[:3] == [{"anchor": first["query"], "positive": first["positive"], "label": 1}] + [
        {"anchor": first["query"], "positive": text, "label": 0} for text in first["negatives"]]

    model = SentenceTransformer(tiny_model_path, device="cpu")
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "st"), max_steps=1, per_device_train_batch_size=8,
                                                report_to=[], save_strategy="no", use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_pandas(triplets.to_pandas()),
                                         loss=MultipleNegativesRankingLoss(model))
    assert trainer.train().global_step == 1


@pytest.mark.slow  # the default run stays under 8 minutes (issue 11)
def test_cli_mine_writes_the_round_and_rejects_bad_flags(ray_session, tiny_model_path, real_pairs, tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", real_pairs[:50])
    out = tmp_path / "out"
    code = main(["mine", pairs, str(out), "--model", tiny_model_path, "--num-negatives", "2", "--index", "flat",
                 "--relative-margin", "0.05", "--sampling-strategy", "random"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "negatives/query" in printed and str(out / "rounds" / "00000" / "mined") in printed
    assert all(len(r["negative_ids"]) <= 2 for r in mined_rows(out))
    with pytest.raises(SystemExit) as bad:
        main(["mine", pairs, str(out), "--index", "annoy"])
    assert bad.value.code == 2
    assert "invalid choice: 'annoy'" in capsys.readouterr().err


@pytest.mark.parametrize("queries_rows, message", [
    ([{"query_id": "q0", "query": "x", "positive_ids": ["nope"]}], "row 0, column positive_ids: id 'nope' is not in the corpus"),
    ([{"query_id": "q0", "query": "x", "positive_ids": []}], "row 0, column positive_ids: expected a non-empty list"),
    ([{"query_id": "q0", "query": "x", "positive_ids": ["d0"]}, {"query_id": "q0", "query": "y", "positive_ids": ["d0"]}],
     "row 1, column query_id: duplicate query id 'q0'"),
    ([{"query_id": "q0", "query": " ", "positive_ids": ["d0"]}], "row 0, column query: empty text"),
    ([{"query_id": "q0", "text": "x", "positive_ids": ["d0"]}], "missing column(s) query"),
])
def test_bad_queries_name_the_row_and_write_nothing(ray_session, tiny_model_path, tmp_path, queries_rows, message):
    corpus, _ = small_corpus(tmp_path)
    queries = write_jsonl(tmp_path / "bad.jsonl", queries_rows)
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"path": tiny_model_path},
                        "corpus": {"path": corpus}, "queries": {"path": queries, "format": "queries"}})
    with pytest.raises(InputError) as err:
        run_round(cfg)
    assert message in str(err.value) and "bad.jsonl" in str(err.value)
    assert not (tmp_path / "run" / "rounds").exists()


def test_queries_are_checked_and_written_one_file_at_a_time(tmp_path):
    """A queries folder becomes inputs/queries file by file (a part each); a query id that an earlier file already
    has is refused naming the later file and row, and the parts written before the refusal are removed."""
    corpus, _ = small_corpus(tmp_path)
    folder = tmp_path / "queries"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"query_id": "q0", "query": "sort a python list", "positive_ids": ["d0"]},
                                     {"query_id": "q1", "query": "topic 3", "positive_ids": ["d10", "d17", "d24"]}])
    write_jsonl(folder / "b.jsonl", [{"query_id": f"q{i}", "query": f"question {i}", "positive_ids": [f"d{i}"]} for i in range(4, 9)])
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "corpus": {"path": corpus},
                        "queries": {"path": str(folder), "format": "queries"}})
    inputs = prepare_inputs(cfg, storage.resolve(cfg.run_dir))
    written = tmp_path / "run" / "inputs" / "queries"
    assert sorted(name for name in os.listdir(written) if name.endswith(".parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert (inputs.query_rows, inputs.max_positives) == (7, 3)
    assert storage.read_table(inputs.queries_url).column("query_id").to_pylist() == ["q0", "q1", "q4", "q5", "q6", "q7", "q8"]
    assert storage.read_table(inputs.queries_url).column("positive_ids").to_pylist()[1] == ["d10", "d17", "d24"]

    write_jsonl(folder / "c.jsonl", [{"query_id": "q9", "query": "new", "positive_ids": ["d9"]},
                                     {"query_id": "q5", "query": "again", "positive_ids": ["d5"]}])
    cfg = cfg.model_copy(update={"run_dir": str(tmp_path / "other")})
    with pytest.raises(InputError, match=r"c.jsonl: row 1, column query_id: duplicate query id 'q5'") as err:
        prepare_inputs(cfg, storage.resolve(cfg.run_dir))
    assert "a.jsonl" not in str(err.value) and "b.jsonl" not in str(err.value)
    assert not (tmp_path / "other" / "inputs" / "queries").exists()


def test_pairs_are_grouped_into_queries_file_by_file_in_buckets(ray_session, tmp_path, real_pairs):
    """Pairs over three files become the corpus (unique positives, then the extra corpus' new texts) a part per
    file and the queries a part per anchor bucket (one bucket in this process, many as Ray tasks): every anchor
    once with each of its positives once, in the order they came, whatever the bucket count; a bad row in the
    last file removes everything written."""
    import contextlib

    from hardneg.pipelines.inputs import _from_pairs, text_id

    pairs = [{"anchor": p["anchor"], "positive": p["positive"]} for p in real_pairs[:90]]
    pairs += pairs[:5] + [{"anchor": pairs[0]["anchor"], "positive": pairs[7]["positive"]}]  # repeats; a second positive
    folder = tmp_path / "pairs"
    folder.mkdir()
    for f in range(3):
        write_jsonl(folder / f"p{f}.jsonl", pairs[f::3])
    read_order = [row for f in range(3) for row in pairs[f::3]]
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": "x0", "text": pairs[1]["positive"]}, {"id": "x1", "text": "an extra text"},
                                                   {"id": "x2", "text": "an extra text"}])
    expected: dict[str, list[str]] = {}
    for row in read_order:
        listed = expected.setdefault(row["anchor"], [])
        if text_id(row["positive"]) not in listed:
            listed.append(text_id(row["positive"]))
    cfg = parse_config({"queries": {"path": str(folder)}, "corpus": {"path": extra}})
    for bucket_bytes, parts in ((2**30, 1), (4_000, None)):
        run = storage.resolve(str(tmp_path / f"run{bucket_bytes}"))
        corpus_dir, queries_dir, staging = (storage.prepare_output(run.join(name)) for name in ("corpus", "queries", "staging"))
        with in_process(cfg) if parts == 1 else contextlib.nullcontext():
            made = _from_pairs(cfg, corpus_dir, queries_dir, staging, bucket_bytes=bucket_bytes)
        queries = storage.read_table(queries_dir.url).to_pylist()
        assert {row["query"]: row["positive_ids"] for row in queries} == expected and len(queries) == len(expected)
        assert all(row["query_id"] == text_id(row["query"]) for row in queries)
        if parts == 1:  # one bucket: the anchors in the order they came
            assert [row["query"] for row in queries] == list(expected)
        else:
            assert len(os.listdir(queries_dir.path)) > 3
        corpus = storage.read_table(corpus_dir.url).to_pylist()
        assert [row["text"] for row in corpus] == list(dict.fromkeys(row["positive"] for row in read_order)) + ["an extra text"]
        assert corpus[-1]["id"] == "x1" and len(os.listdir(corpus_dir.path)) == 4
        assert (made.pairs_per_anchor, made.max_positives, made.corpus_rows) == (3, 2, len(corpus))
        assert not os.path.exists(staging.path)

    write_jsonl(folder / "p3.jsonl", [{"anchor": "fine", "positive": "also fine"}, {"anchor": "", "positive": "x"}])
    run = storage.resolve(str(tmp_path / "refused"))
    folders = [storage.prepare_output(run.join(name)) for name in ("corpus", "queries", "staging")]
    with pytest.raises(InputError, match=r"p3.jsonl: row 1, column anchor: empty text"):
        _from_pairs(cfg, *folders, bucket_bytes=4_000)
    assert not any(os.path.exists(f.path) for f in folders)


def test_bad_pairs_name_the_file_row_and_column(ray_session, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": "a", "positive": "b"}, {"anchor": "c", "positive": ""}])
    with pytest.raises(InputError, match=r"pairs.jsonl: row 1, column positive: empty text"):
        run_round(parse_config({"run_dir": str(tmp_path / "run"), "queries": {"path": pairs}}))
