"""Bad input, config and models are refused at the door: before Ray starts, naming what is wrong, writing nothing.

Door refusals run ``hardneg.cli.main`` in this process. Each asserts the message, the exit code and
an untouched run directory; ``refused_at_the_door`` also asserts the command never reached the
lock or Ray (``start_ray`` logs "resources:"; neither was logged) and that Ray's state did not change.
"""

import json
import logging
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TESTS_DIR, write_jsonl

from hardneg import storage
from hardneg.cli import main
from hardneg.config import dump_config, parse_config

REPO = os.path.dirname(TESTS_DIR)
PLACES = [{"id": i, "lat": 40.0 + i / 10, "lon": 10.0 + i / 10, "text": f"place {i}"} for i in range(30)]
GEO_ARGS = ["--miner", "geographic", "--num-negatives", "2", "--max-km", "500", "--sampling-strategy", "top"]


@pytest.fixture(autouse=True)
def default_storage():
    yield
    storage.configure()


@pytest.fixture
def refused_at_the_door(caplog, capsys):
    """Run ``main(argv)``; check it exited 2 before the lock or Ray; return its stderr."""
    import ray

    def run(argv, code=2):
        caplog.set_level(logging.INFO, logger="hardneg")
        ray_was_running = ray.is_initialized()
        assert main(argv) == code
        assert ray.is_initialized() == ray_was_running
        assert "locked " not in caplog.text and "resources:" not in caplog.text  # neither the lock nor start_ray
        assert "Ray instance" not in caplog.text and "joining Ray" not in caplog.text
        return capsys.readouterr().err

    return run


def assert_untouched(run_dir):
    assert not os.path.exists(run_dir), sorted(os.listdir(run_dir))


def pairs_file(tmp_path, rows=None, name="pairs.jsonl"):
    return write_jsonl(tmp_path / name, rows or [{"anchor": f"question {i}", "positive": f"answer {i}"} for i in range(8)])


# --- a fresh process: no Ray at all ---------------------------------------------------------------


def test_a_bad_input_is_refused_by_a_fresh_process_without_starting_ray(tmp_path):
    pairs = pairs_file(tmp_path, [{"anchor": "a", "positive": "b"}, {"anchor": "c", "positive": ""}])
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "hardneg.cli", "mine", pairs, str(run_dir)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"{pairs}: row 1, column positive: empty text" in done.stderr
    assert "Ray" not in done.stderr and "Traceback" not in done.stderr
    assert_untouched(run_dir)


# --- a round that runs on Ray checks its inputs in a child process --------------------------------


def test_inputs_over_the_in_process_limit_are_checked_by_a_child_with_the_same_refusal(refused_at_the_door, tmp_path):
    from hardneg.door import _check_round, _large, check_in_child
    from hardneg.errors import HardnegError, InputError

    pairs = pairs_file(tmp_path, [{"anchor": "a", "positive": "b"}, {"anchor": "c", "positive": ""}])
    run_dir = tmp_path / "run"
    job = tmp_path / "job.yaml"
    small = {"run_dir": str(run_dir), "queries": {"path": pairs}}
    large = {**small, "ray": {"in_process_max_bytes": os.path.getsize(pairs) - 1}}
    assert not _large(parse_config(small)) and _large(parse_config(large))
    assert not _large(parse_config({**large, "ray": {**large["ray"], "in_process": "always"}}))
    with pytest.raises(InputError) as here:
        _check_round(parse_config(small))  # in this process
    with pytest.raises(InputError) as there:
        check_in_child(parse_config(large))
    assert str(here.value) == str(there.value) and f"{pairs}: row 1, column positive: empty text" in str(there.value)
    job.write_text(dump_config(parse_config(large)))
    err = refused_at_the_door(["run", str(job)])  # the command the user runs: the child's refusal, exit 2
    assert f"{pairs}: row 1, column positive: empty text" in err and "Traceback" not in err
    assert_untouched(run_dir)
    pairs_file(tmp_path)  # fixed: the child passes it
    check_in_child(parse_config(large))
    assert_untouched(run_dir)
    # A child that dies of something else than a refusal (here a TypeError: an option its checks do not take) is
    # no refusal: the driver says so, with the exit code, and the child's traceback is on stderr.
    with pytest.raises(HardnegError) as crash:
        check_in_child(parse_config(large), no_such_option=True)
    assert type(crash.value) is HardnegError and "failed in their child process (exit 1)" in str(crash.value)


# --- 4: a rejected input leaves nothing; the fixed input then runs in the same directory -----------


def test_rejected_input_leaves_no_run_yaml_and_a_fixed_input_then_runs(ray_session, refused_at_the_door, tmp_path, capsys):
    run_dir = tmp_path / "run"
    bad = write_jsonl(tmp_path / "bad.jsonl", PLACES[:5] + [{"id": 99, "lat": 91.0, "lon": 0.0}])
    err = refused_at_the_door(["mine", bad, str(run_dir), *GEO_ARGS])
    assert f"{bad}: row 5, column lat: lat 91.0 is outside [-90, 90]" in err
    assert_untouched(run_dir)
    assert main(["inspect", str(run_dir)]) == 2  # a failed directory is not a run
    assert "not a hardneg run directory" in capsys.readouterr().err

    good = write_jsonl(tmp_path / "good.jsonl", PLACES)
    assert main(["mine", good, str(run_dir), *GEO_ARGS]) == 0
    assert sorted(os.listdir(run_dir)) == ["report.html", "rounds", "run.yaml"]  # the lock is gone with its writer
    capsys.readouterr()
    assert main(["inspect", str(run_dir)]) == 0
    assert "rounds (1)" in capsys.readouterr().out


def test_rejected_pairs_leave_no_inputs_and_no_run_yaml(refused_at_the_door, tiny_model_path, tmp_path):
    pairs = pairs_file(tmp_path, [{"anchor": "a", "positive": "b"}, {"anchor": None, "positive": "d"}])
    run_dir = tmp_path / "run"
    err = refused_at_the_door(["mine", pairs, str(run_dir), "--model", tiny_model_path])
    assert f"{pairs}: row 1, column anchor: null text" in err and "nothing was written" in err
    assert_untouched(run_dir)


# --- 5: invalid UTF-8 ------------------------------------------------------------------------------


def test_invalid_utf8_names_file_row_and_column(refused_at_the_door, tiny_model_path, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b'{"anchor": "a", "positive": "b"}\n\n{"anchor": "c", "positive": "caf\xe9 au lait"}\n')
    run_dir = tmp_path / "run"
    err = refused_at_the_door(["mine", str(pairs), str(run_dir), "--model", tiny_model_path])
    assert f"{pairs}: row 1, column positive: not valid UTF-8 (invalid continuation byte at byte 3" in err
    assert "re-encode the file as UTF-8" in err and "Traceback" not in err
    assert_untouched(run_dir)


def test_invalid_utf8_in_a_corpus_is_refused_by_embed(refused_at_the_door, tiny_model_path, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"id": 1, "text": "fine"}\n{"id": 2, "text": "\xff\xfe"}\n')
    err = refused_at_the_door(["embed", str(corpus), str(tmp_path / "out"), "--model", tiny_model_path])
    assert f"{corpus}: row 1, column text: not valid UTF-8" in err
    assert_untouched(tmp_path / "out")


# --- 6: a JSON line longer than Arrow's block ------------------------------------------------------


def test_a_ten_megabyte_json_line_is_read_whole(tmp_path):
    from hardneg.door import check_round

    long_text = "word " * (2 << 20)  # 10 MiB, ten times Arrow's default block
    pairs = pairs_file(tmp_path, [{"anchor": "short", "positive": long_text}, {"anchor": "next", "positive": "row"}])
    table = storage.read_table_file(storage.resolve(pairs), ["anchor", "positive"])
    assert table.column("positive").to_pylist() == [long_text, "row"]
    check_round(parse_config({"run_dir": str(tmp_path / "run"), "queries": {"path": pairs}}))  # passes the door
    assert_untouched(tmp_path / "run")


# --- 7: NaN and infinite thresholds ----------------------------------------------------------------


def test_nan_flag_is_refused_with_its_field(refused_at_the_door, tmp_path):
    err = refused_at_the_door(["mine", pairs_file(tmp_path), str(tmp_path / "run"), "--absolute-margin", "nan"])
    assert "mine.absolute_margin: Input should be a finite number (got nan)" in err
    assert_untouched(tmp_path / "run")


def test_nan_in_yaml_is_refused_with_every_field(refused_at_the_door, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nqueries:\n  path: {pairs_file(tmp_path)}\n"
                      "mine:\n  max_score: .nan\n  min_score: .nan\n  relative_margin: .inf\n")
    err = refused_at_the_door(["run", str(config)])
    assert "mine.max_score: Input should be a finite number (got nan)" in err
    assert "mine.min_score: Input should be a finite number (got nan)" in err
    assert "mine.relative_margin: Input should be a finite number (got inf)" in err
    assert_untouched(tmp_path / "run")


# --- 8: model directories --------------------------------------------------------------------------


def junk_config(path):
    path.mkdir()
    (path / "config.json").write_text("{not json")
    return path


def no_model_type(path):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    return path


def no_tokenizer(path):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (path / "model.safetensors").write_bytes(b"")
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no such directory"),
    (lambda p: p.mkdir() or p, "not a model directory (no config.json), and the directory is empty"),
    (junk_config, "config.json is not valid JSON"),
    (no_model_type, "config.json has no model_type"),
    (no_tokenizer, "no tokenizer (none of tokenizer.json"),
])
def test_bad_model_path_is_named_before_anything_runs(refused_at_the_door, tmp_path, make, message):
    model = make(tmp_path / "model")
    err = refused_at_the_door(["mine", pairs_file(tmp_path), str(tmp_path / "run"), "--model", str(model)])
    assert f"model.path: {model}" in err and message in err
    assert_untouched(tmp_path / "run")


def test_missing_cross_encoder_is_named_before_anything_runs(refused_at_the_door, tiny_model_path, tmp_path):
    err = refused_at_the_door(["mine", pairs_file(tmp_path), str(tmp_path / "run"), "--model", tiny_model_path,
                               "--cross-encoder", str(tmp_path / "ce")])
    assert f"mine.cross_encoder: {tmp_path / 'ce'}: no such directory" in err
    assert_untouched(tmp_path / "run")


def test_remine_checkpoint_with_junk_config_is_named_before_anything_runs(refused_at_the_door, tiny_model_path, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = parse_config({"run_dir": str(run_dir), "model": {"path": tiny_model_path}, "queries": {"path": pairs_file(tmp_path)}})
    (run_dir / "run.yaml").write_text(dump_config(cfg))
    checkpoint = junk_config(tmp_path / "checkpoint")
    err = refused_at_the_door(["remine", str(run_dir), "--checkpoint", str(checkpoint)])
    assert f"--checkpoint: {checkpoint}/config.json is not valid JSON" in err
    assert sorted(os.listdir(run_dir)) == ["run.yaml"]


# --- 10: float ids ---------------------------------------------------------------------------------


def test_float_corpus_ids_are_refused(refused_at_the_door, tiny_model_path, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": 0.0, "text": "zero"}, {"id": 1.0, "text": "one"}])
    err = refused_at_the_door(["embed", corpus, str(tmp_path / "out"), "--model", tiny_model_path])
    assert f"{corpus}: row 0, column id: float id 0.0" in err and "ids must be strings or integers" in err
    assert_untouched(tmp_path / "out")


def test_float_query_ids_are_refused(refused_at_the_door, tiny_model_path, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "d0", "text": "zero"}, {"id": "d1", "text": "one"}])
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"query_id": 1.0, "query": "q", "positive_ids": ["d0"]}])
    err = refused_at_the_door(["mine", queries, str(tmp_path / "run"), "--model", tiny_model_path,
                               "--corpus", corpus, "--queries-format", "queries"])
    assert f"{queries}: row 0, column query_id: float id 1.0" in err
    assert_untouched(tmp_path / "run")


def test_float_place_ids_are_refused(refused_at_the_door, tmp_path):
    places = write_jsonl(tmp_path / "places.jsonl", [{**place, "id": place["id"] + 0.5} for place in PLACES])
    err = refused_at_the_door(["mine", places, str(tmp_path / "run"), *GEO_ARGS])
    assert f"{places}: row 0, column id: float id 0.5" in err
    assert_untouched(tmp_path / "run")


# --- #12: corpus files that disagree on a column's type --------------------------------------------


def test_corpus_files_with_int_and_string_ids_name_both_files(refused_at_the_door, tiny_model_path, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    ints = write_jsonl(folder / "a.jsonl", [{"id": 1, "text": "one"}, {"id": 2, "text": "two"}])
    strings = write_jsonl(folder / "b.jsonl", [{"id": "x", "text": "ex"}])
    err = refused_at_the_door(["embed", str(folder), str(tmp_path / "out"), "--model", tiny_model_path])
    assert f"{ints} and {strings}: column id holds integer values in the first and string values in the second" in err
    assert_untouched(tmp_path / "out")


def test_corpus_files_with_different_schemas_name_both_files(refused_at_the_door, tiny_model_path, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["alpha", "beta"]}), folder / "a.parquet")
    pq.write_table(pa.table({"id": ["c"], "text": pa.array([3], pa.int64()), "group": ["g"]}), folder / "b.parquet")
    corpus = write_jsonl(tmp_path / "queries.jsonl", [{"query_id": "q", "query": "q", "positive_ids": ["a"]}])
    err = refused_at_the_door(["mine", corpus, str(tmp_path / "run"), "--model", tiny_model_path,
                               "--corpus", str(folder), "--queries-format", "queries"])
    assert f"{folder / 'a.parquet'} and {folder / 'b.parquet'}: column text holds string values in the first and integer values in the second" in err
    assert_untouched(tmp_path / "run")
