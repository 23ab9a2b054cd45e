"""The re-mining loop: run state, held-out split and eval, `hardneg remine` / `inspect` / `train`, resume."""

import json
import shutil

import pytest
from conftest import in_process, write_jsonl

from hardneg import storage
from hardneg.cli import main
from hardneg.config import TrainConfig, parse_config
from hardneg.pipelines.heldout import heldout_ids, heldout_ids_of
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
    with in_process(cfg):  # what is held out and evaluated is the point; the remine CLI below runs round 1 on Ray
        manifest = run_round(cfg, 0, holdout=True)
    return cfg, manifest


# --- pure pieces -----------------------------------------------------------------------------------


def test_heldout_split_is_deterministic_sized_and_order_free(tmp_path):
    ids = [f"q{i}" for i in range(50)]
    cfg = TrainConfig(eval_fraction=0.2, seed=3)
    held = heldout_ids(ids, cfg)
    assert len(held) == 10 and held == heldout_ids(list(reversed(ids)), cfg)
    assert held != heldout_ids(ids, TrainConfig(eval_fraction=0.2, seed=4))
    assert heldout_ids(ids, TrainConfig(eval_fraction=0.0)) == set()
    assert len(heldout_ids(ids[:3], TrainConfig(eval_fraction=0.1))) == 1  # at least one held out
    # Read file by file from a committed queries folder (what a round does), the same split.
    (tmp_path / "queries").mkdir()
    write_jsonl(tmp_path / "queries" / "a.jsonl", [{"query_id": i} for i in ids[:17]])
    write_jsonl(tmp_path / "queries" / "b.jsonl", [{"query_id": i} for i in ids[17:]])
    assert heldout_ids_of(str(tmp_path / "queries"), cfg) == held
    assert heldout_ids_of(str(tmp_path / "queries"), TrainConfig(eval_fraction=0.0)) == frozenset()


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


@pytest.mark.slow  # the default run stays under 8 minutes (issue 11)
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


# --- the loop end to end ---------------------------------------------------------------------------


@pytest.mark.slow
def test_train_loop_two_rounds_resumes_after_a_stop_between_rounds(ray_session, real_pairs, tiny_model_path, tmp_path, capsys):
    from hardneg.config import dump_config
    from hardneg.encoder import Encoder
    from hardneg.pipelines.loop import train_loop

    cfg = loop_config(tmp_path, real_pairs, tiny_model_path, epochs=1)
    first = train_loop(cfg)  # "killed" after block 0: round 0 mined, one block trained, no round 1
    assert [(c.block, c.round, c.epoch, c.step) for c in first] == [(0, 0, 1, 2)]
    state = run_state(cfg.run_dir)
    assert [r.index for r in state.rounds] == [0]
    round0 = (tmp_path / "run" / "rounds" / "00000" / "MANIFEST.json").read_text()

    config = tmp_path / "run.yaml"
    config.write_text(dump_config(cfg))
    assert main(["train", str(config), "--epochs", "2"]) == 0  # `hardneg train` picks up where it stopped
    assert "rounds (2)" in capsys.readouterr().out
    state = run_state(cfg.run_dir)
    assert [r.index for r in state.rounds] == [0, 1]
    assert (tmp_path / "run" / "rounds" / "00000" / "MANIFEST.json").read_text() == round0  # round 0 not redone
    block0, block1 = state.checkpoints
    assert state.rounds[1].encoder == block0.id and state.rounds[1].manifest["model"] == block0.path
    assert (block1.round, block1.epoch, block1.step) == (1, 2, 4)  # training resumed from block 0's checkpoint
    assert block0.id.startswith("checkpoint_") and block1.path.startswith(str(tmp_path / "run" / "checkpoints"))
    assert Encoder.load(block1.path).encode(["a query"]).shape == (1, 32)
    rows = storage.read_table(round_dir(cfg.run_dir, 1).join("mined").url).to_pylist()
    assert {row["encoder"] for row in rows} == {block0.id} and {row["round"] for row in rows} == {1}

    assert main(["train", str(config), "--epochs", "2"]) == 0  # every block committed: nothing to do
    assert len(run_state(cfg.run_dir).checkpoints) == 2
    assert main(["remine", cfg.run_dir]) == 0  # the last checkpoint has not mined yet
    assert "done: round 2" in capsys.readouterr().out
    assert main(["remine", cfg.run_dir]) == 0
    assert "nothing to do: round 2" in capsys.readouterr().out


@pytest.mark.slow  # the default run stays under 8 minutes (issue 11)
def test_orchestrator_tick_commands_run_in_order_and_repeat_safely(ray_session, real_pairs, tiny_model_path, tmp_path, capsys):
    """The commands the Airflow DAG / Prefect flow run, through the CLI: tick 1 makes round 0 and trains
    block 0; tick 2 re-mines round 1 with block 0's checkpoint; a repeated remine is a no-op."""
    from hardneg.config import dump_config
    from infra.orchestration import tick_commands

    cfg = loop_config(tmp_path, real_pairs, tiny_model_path, epochs=1)
    config = tmp_path / "job.yaml"
    config.write_text(dump_config(cfg))
    commands = tick_commands(str(config), cfg.run_dir)
    assert [c[1] for c in commands] == ["train", "remine", "train"]

    outputs = []
    for command in commands:
        assert main(command[1:]) == 0, command
        outputs.append(capsys.readouterr())
    assert json.loads(outputs[1].out)["round"] == 0 and "nothing to do: round 0" in outputs[1].err
    state = run_state(cfg.run_dir)
    assert [r.index for r in state.rounds] == [0] and [c.block for c in state.checkpoints] == [0]

    assert main(commands[1][1:]) == 0  # tick 2: the new checkpoint mines round 1
    made = json.loads(capsys.readouterr().out)
    assert made["round"] == 1 and made["encoder"] == state.checkpoints[0].id
    assert made["figures"]["eval"]["queries"] == made["heldout"]["queries"] > 0
    assert main(commands[1][1:]) == 0
    assert "nothing to do: round 1" in capsys.readouterr().err
    assert main(commands[2][1:]) == 0  # train.epochs reached: nothing more to train
    assert len(run_state(cfg.run_dir).checkpoints) == 1


def test_airflow_and_prefect_files_import_without_them_and_use_the_same_commands():
    import importlib

    from infra.orchestration import tick_shell_lines

    dag = importlib.import_module("infra.airflow_dag")
    flow = importlib.import_module("infra.prefect_flow")
    assert (dag.DAG is None) == (importlib.util.find_spec("airflow") is None)
    assert (flow.flow is None) == (importlib.util.find_spec("prefect") is None)
    assert tick_shell_lines("job.yaml", "runs/a") == [
        "hardneg train job.yaml --max-blocks 0", "hardneg remine runs/a --json", "hardneg train runs/a --max-blocks 1",
    ]


@pytest.mark.slow
def test_asynchronous_loop_remines_on_a_task_while_the_next_block_trains(ray_session, real_pairs, tiny_model_path, tmp_path):
    import threading

    import ray
    from faults import WAIT_SECONDS, fault_gate

    from hardneg.pipelines.loop import train_loop

    cfg = loop_config(tmp_path, real_pairs, tiny_model_path, epochs=3, asynchronous=True, cpus_per_worker=0.5)
    cfg.embed.cpus_per_actor = 0.5  # trainer 0.5 + Encoder actor 0.5 leave a CPU for tokenizer and read tasks
    with fault_gate() as gate:
        # The re-mine of block 0's checkpoint waits until block 1 trains; block 2 waits until that re-mine committed.
        ray.get([gate.hold.remote("remine.start"), gate.hold.remote("loop.round", block=2)])
        errors = []

        def conduct():
            try:
                ray.get(gate.wait_for.remote("loop.train", block=1), timeout=WAIT_SECONDS)
                ray.get(gate.release.remote("remine.start"))
                ray.get(gate.wait_for.remote("remine.done"), timeout=WAIT_SECONDS)
            except Exception as err:
                errors.append(err)
            finally:
                ray.get([gate.release.remote("remine.start"), gate.release.remote("loop.round")])

        conductor = threading.Thread(target=conduct, daemon=True)
        conductor.start()
        blocks = train_loop(cfg)
        conductor.join()
    assert not errors, errors
    state = run_state(cfg.run_dir)
    assert [(c.block, c.epoch) for c in blocks] == [(0, 1), (1, 2), (2, 3)]
    # block 1 trains while round 1 is being mined from block 0's checkpoint, so on round 0; block 2 on round 1
    assert [c.round for c in blocks] == [0, 0, 1]
    assert [r.encoder for r in state.rounds] == ["base", blocks[0].id]  # block 1 started no re-mine: one was running
    assert all(r.manifest["figures"]["eval"]["queries"] > 0 for r in state.rounds)
