"""Sample4Geo's schedule on a text cross-view set: GPS rounds first, then similarity rounds (DSS) mined
with the newest checkpoint, trained on whole batches."""

import pytest

from hardneg import storage
from hardneg.config import parse_config
from hardneg.errors import ConfigError
from hardneg.pipelines.remine import run_state
from hardneg.rundir import round_dir
from conftest import crossview_cities, write_jsonl


@pytest.mark.slow  # two rounds and two training blocks: over 4 minutes on a busy 2-core box
def test_gps_epochs_then_a_similarity_round_mined_with_the_previous_checkpoint(ray_session, tiny_model_path, tmp_path):
    from hardneg.pipelines.loop import train_loop

    rows = crossview_cities(300)
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"), "model": {"path": tiny_model_path},
        "corpus": {"path": write_jsonl(tmp_path / "cities.jsonl", rows)},
        "mine": {"miner": "geographic", "num_negatives": 4, "min_km": 5, "max_km": 2000, "batches": True, "composed_batch_size": 8,
                 "near_neighbours": 2, "random_neighbours": 1},
        "train": {"epochs": 2, "remine_every": 1, "gps_epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2,
                  "symmetric": True, "learnable_scale": True, "learning_rate": 1e-3},
    })
    blocks = train_loop(cfg)
    state = run_state(cfg.run_dir)
    assert [r.index for r in state.rounds] == [0, 1] and len(blocks) == 2
    gps, dss = (r.manifest for r in state.rounds)
    assert gps["miner"] == "geographic" and gps["encoder"] == "base"
    assert dss["miner"] == "mixed" and dss["encoder"] == blocks[0].id and dss["model"] == blocks[0].path
    mined = storage.read_table(round_dir(cfg.run_dir, 1).join("mined").url).to_pylist()
    views = {str(row["id"]): row["view"] for row in rows}
    for row in mined:
        assert row["positive"] == views[row["query_id"]]  # the place's own other view
        assert row["negatives"] == [views[i] for i in row["negative_ids"]] and row["query_id"] not in row["negative_ids"]
        assert set(row["negative_source"]) <= {"similarity"}
    assert blocks[1].round == 1  # the second block trained on the similarity round


def test_gps_epochs_need_the_geographic_miner():
    with pytest.raises(ConfigError, match="train.gps_epochs needs mine.miner geographic"):
        parse_config({"train": {"gps_epochs": 4}})
