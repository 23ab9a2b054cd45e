"""The re-mining loop: run state, held-out split and eval, `hardneg remine` / `inspect` / `train`, resume."""

import json
import shutil

import pyarrow as pa
import pytest
from conftest import write_jsonl

from hardneg import storage
from hardneg.cli import main
from hardneg.config import TrainConfig, parse_config
from hardneg.pipelines.heldout import heldout_ids, split_queries
from hardneg.pipelines.remine import remine, run_state
from hardneg.pipelines.run import round_dir, run_round


def loop_config(tmp_path, pairs, model_path, **train):
    """60 real docstring pairs, tiny model, small batches: what every test here runs on."""
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": p["anchor"], "positive": p["positive"]} for p in pairs[:60]])
    return parse_config({
        "run_dir": str(tmp_path / "run"), "model": {"path": model_path}, "queries": {"path": path, "format": "pairs"},
        "mine": {"num_negatives": 2}, "embed": {"batch_size": 32},
        "train": {"epochs": 2, "remine_every": 1, "batch_size": 8, "max_steps_per_epoch": 2, "learning_rate": 1e-3,
                  "eval_fraction": 0.2, **train},
    })


@pytest.fixture(scope="module")
def round0(ray_session, tmp_path_factory, real_pairs, tiny_model_path):
    """A run directory with round 0 (held-out split) committed, and a config that writes into it."""
    tmp_path = tmp_path_factory.mktemp("round0")
    cfg = loop_config(tmp_path, real_pairs, tiny_model_path)
    manifest = run_round(cfg, 0, holdout=True)
    return cfg, manifest


# --- pure pieces -----------------------------------------------------------------------------------


def test_heldout_split_is_deterministic_sized_and_order_free():
    ids = [f"q{i}" for i in range(50)]
    cfg = TrainConfig(eval_fraction=0.2, seed=3)
    held = heldout_ids(ids, cfg)
    assert len(held) == 10 and held == heldout_ids(list(reversed(ids)), cfg)
    assert held != heldout_ids(ids, TrainConfig(eval_fraction=0.2, seed=4))
    assert heldout_ids(ids, TrainConfig(eval_fraction=0.0)) == set()
    assert len(heldout_ids(ids[:3], TrainConfig(eval_fraction=0.1))) == 1  # at least one held out
    table = pa.table({"query_id": ids, "query": ids, "positive_ids": [[i] for i in ids]})
    train, heldout = split_queries(table, cfg)
    assert set(heldout.column("query_id").to_pylist()) == held and train.num_rows == 40


# --- one round: held-out, run_state, remine, inspect ----------------------------------------------


def test_heldout_queries_are_not_mined_and_the_round_is_evaluated(round0):
    cfg, manifest = round0
    held = heldout_ids(storage.read_table(f"{cfg.run_dir}/inputs/queries").column("query_id").to_pylist(), cfg.train)
    mined = storage.read_table(round_dir(cfg.run_dir, 0).join("mined").url)
    assert len(held) == manifest["heldout"]["queries"] > 0
    assert not held & set(mined.column("query_id").to_pylist())
    ev = storage.read_manifest(round_dir(cfg.run_dir, 0).join("eval"))
    assert manifest["figures"]["eval"] == ev and ev["queries"] == len(held)
    assert 0 <= ev["ndcg@10"] <= 1 and 0 <= ev["recall@10"] <= 1


def test_run_state_ignores_uncommitted_rounds_and_blocks(round0, tmp_path):
    cfg, manifest = round0
    run = tmp_path / "copy"
    shutil.copytree(cfg.run_dir, run)
    (run / "rounds" / "00001" / "embeddings").mkdir(parents=True)  # a round that died while embedding
    (run / "checkpoints" / "blocks" / "00000").mkdir(parents=True)  # a block that died before its record
    state = run_state(str(run))
    assert [(r.index, r.encoder) for r in state.rounds] == [(0, "base")]
    assert state.checkpoints == []
    assert run_state(str(tmp_path / "missing")).rounds == []


def test_remine_cli_nothing_to_do_then_a_checkpoint_makes_the_next_round(round0, tiny_model_path, capsys):
    cfg, manifest = round0
    assert main(["remine", cfg.run_dir]) == 0  # no checkpoint yet, round 0 exists
    assert "nothing to do: round 0 (encoder base)" in capsys.readouterr().out

    assert main(["remine", cfg.run_dir, "--checkpoint", tiny_model_path, "--json"]) == 0
    out = capsys.readouterr()
    made = json.loads(out.out)  # stdout holds the manifest JSON and nothing else
    assert "done: round 1" in out.err
    assert made["round"] == 1 and made["model"] == tiny_model_path and made["figures"]["eval"]["queries"] > 0

    assert main(["remine", cfg.run_dir, "--checkpoint", tiny_model_path]) == 0
    assert "nothing to do: round 1" in capsys.readouterr().out
    assert [r.index for r in run_state(cfg.run_dir).rounds] == [0, 1]

    assert main(["inspect", cfg.run_dir]) == 0
    text = capsys.readouterr().out
    assert "rounds (2)" in text and "encoder base" in text and "ndcg@10" in text and "checkpoints (0)" in text
    assert main(["inspect", cfg.run_dir, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["index"] for r in listed["rounds"]] == [0, 1]


def test_remine_bad_run_dir_or_checkpoint_exits_2_with_a_message(round0, tmp_path, capsys):
    cfg, _ = round0
    assert main(["remine", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not a hardneg run directory (no run.yaml)" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert main(["remine", cfg.run_dir, "--checkpoint", str(tmp_path)]) == 2
    assert "not a model directory (no config.json)" in capsys.readouterr().err


def test_remine_resumes_a_half_done_round_of_the_same_checkpoint(round0, tiny_model_path, tmp_path):
    cfg, _ = round0
    run = tmp_path / "copy"
    shutil.copytree(cfg.run_dir, run, ignore=shutil.ignore_patterns("00001"))
    cfg = cfg.model_copy(update={"run_dir": str(run)})
    status, first = remine(cfg, tiny_model_path)
    embeddings = (run / "rounds" / "00001" / "embeddings" / "MANIFEST.json").read_text()
    (run / "rounds" / "00001" / "MANIFEST.json").unlink()  # died after its stages, before the round commit
    (run / "rounds" / "00001" / "mined" / "MANIFEST.json").unlink()
    status, again = remine(cfg, tiny_model_path)
    assert status == "done" and again["round"] == 1 and again["counts"] == first["counts"]
    assert (run / "rounds" / "00001" / "embeddings" / "MANIFEST.json").read_text() == embeddings  # kept, not redone
