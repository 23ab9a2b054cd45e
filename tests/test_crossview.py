"""Sample4Geo's schedule on a text cross-view set: GPS rounds first, then similarity rounds (DSS) mined
with the newest checkpoint, trained on whole batches; held-out places evaluated every round."""

import os

import pytest

from hardneg import storage
from hardneg.config import load_config, parse_config
from hardneg.errors import ConfigError
from hardneg.pipelines.heldout import heldout_ids
from hardneg.pipelines.remine import run_state
from hardneg.rundir import round_dir
from conftest import crossview_cities, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_heldout_places_left_out(run_dir: str, round_index: int, held: set) -> None:
    """No mined row, and no row of ``batches/``, names a held-out place as its anchor or a negative."""
    here = round_dir(run_dir, round_index)
    for folder in ("mined", "batches"):
        rows = storage.read_table(here.join(folder).url, ["query_id", "negative_ids"]).to_pylist()
        assert rows and not any(row["query_id"] in held or held & set(row["negative_ids"]) for row in rows), folder


def assert_place_eval(manifest: dict, held: set, model: str) -> None:
    ev = manifest["figures"]["eval"]
    assert manifest["heldout"]["places"] == ev["queries"] == ev["candidates"] == len(held) > 0
    assert 0 <= ev["recall@1"] <= ev["recall@5"] <= ev["recall@10"] <= 1 and 0 <= ev["ndcg@10"] <= 1
    assert ev["model"] == model and ev["of"] == "places"


def test_a_gps_round_holds_places_out_and_evaluates_the_encoder_it_trains_from(ray_session, tiny_model_path, tmp_path):
    from hardneg.pipelines.run import run_round
    from hardneg.summary import run_summary

    rows = crossview_cities(40)
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"), "model": {"path": tiny_model_path},
        "corpus": {"path": write_jsonl(tmp_path / "cities.jsonl", rows)},
        "mine": {"miner": "geographic", "num_negatives": 4, "min_km": 5, "batches": True, "composed_batch_size": 8},
        "train": {"eval_fraction": 0.2, "seed": 3},
    })
    manifest = run_round(cfg, 0, holdout=True)
    held = heldout_ids([str(row["id"]) for row in rows], cfg.train)
    assert len(held) == 8 and manifest["figures"]["queries"] == 32 and manifest["counts"]["corpus"] == 40
    assert_heldout_places_left_out(cfg.run_dir, 0, held)
    assert_place_eval(manifest, held, tiny_model_path)
    assert "recall@1 " in run_summary(run_state(cfg.run_dir)) and "held-out places" in run_summary(run_state(cfg.run_dir))


def test_the_crossview_example_config_parses_and_its_corpus_exists():
    cfg = load_config(os.path.join(ROOT, "examples", "crossview.yaml"))
    assert cfg.mine.miner == "geographic" and cfg.mine.batches and cfg.train.gps_epochs == 1 and cfg.train.remine_every == 1
    assert cfg.train.symmetric and cfg.train.learnable_scale and cfg.train.eval_fraction > 0
    assert cfg.run_dir == "runs/crossview" and not os.path.isabs(cfg.corpus.path)
    path = os.path.join(ROOT, cfg.corpus.path)
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    assert all(f'"{column}"' in first for column in ("id", "lat", "lon", "text", "view"))


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
    held = heldout_ids([str(row["id"]) for row in rows], cfg.train)  # one split, both rounds
    for index, model in ((0, tiny_model_path), (1, blocks[0].path)):  # the GPS round: the encoder block 0 trains from
        assert_heldout_places_left_out(cfg.run_dir, index, held)
        assert_place_eval(state.rounds[index].manifest, held, model)
    mined = storage.read_table(round_dir(cfg.run_dir, 1).join("mined").url).to_pylist()
    views = {str(row["id"]): row["view"] for row in rows}
    for row in mined:
        assert row["positive"] == views[row["query_id"]]  # the place's own other view
        assert row["negatives"] == [views[i] for i in row["negative_ids"]] and row["query_id"] not in row["negative_ids"]
        assert set(row["negative_source"]) <= {"similarity"}
    assert blocks[1].round == 1  # the second block trained on the similarity round
    final = blocks[1].metrics["eval"]  # no round mines with the last checkpoint: the loop evaluated it
    assert final["model"] == blocks[1].path and final["queries"] == len(held) and 0.0 <= final["recall@1"] <= 1.0
    assert run_state(cfg.run_dir).checkpoints[1].metrics["eval"] == final


def test_gps_epochs_need_the_geographic_miner():
    with pytest.raises(ConfigError, match="train.gps_epochs needs mine.miner geographic"):
        parse_config({"train": {"gps_epochs": 4}})


@pytest.mark.slow  # a training block on Ray Train, then a similarity round with its checkpoint (about a minute)
def test_separate_view_weights_train_two_encoders_and_the_next_round_embeds_each_view_with_its_own(ray_session, tiny_model_path, tmp_path):
    """``train.view_weights: separate``: the second view (the rows' positives and negatives) trains its own encoder,
    saved in the checkpoint's ``view/`` folder; both folders load in transformers and sentence-transformers, and
    the next round (DSS: the mixed miner with the checkpoint) embeds the first views with the checkpoint and the
    second views with ``view/``."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from hardneg.encoder import Encoder
    from hardneg.pipelines.loop import round_dataset
    from hardneg.pipelines.run import run_round
    from hardneg.search import read_embeddings
    from hardneg.trainers.fit import fit_round

    rows = crossview_cities(48)
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"), "model": {"path": tiny_model_path},
        "corpus": {"path": write_jsonl(tmp_path / "cities.jsonl", rows)},
        "mine": {"miner": "geographic", "num_negatives": 2, "min_km": 5, "batches": True, "composed_batch_size": 8},
        "train": {"view_weights": "separate", "batch_size": 8, "learning_rate": 1e-3, "symmetric": True, "eval_fraction": 0},
    })
    manifest = run_round(cfg, 0)
    result = fit_round(cfg.train, tiny_model_path, round_dataset(cfg, manifest), str(tmp_path / "checkpoints"), "views", epochs=1)
    checkpoint = result.checkpoint_path
    texts, views = [row["text"] for row in rows], [row["view"] for row in rows]
    first, second = Encoder.load(checkpoint), Encoder.load(os.path.join(checkpoint, "view"))
    assert not np.allclose(first.encode(views), second.encode(views), atol=1e-4)  # two encoders, trained apart
    assert not np.allclose(Encoder.load(tiny_model_path).encode(views), second.encode(views), atol=1e-4)  # and the view one trained
    np.testing.assert_allclose(SentenceTransformer(os.path.join(checkpoint, "view"), device="cpu").encode(views), second.encode(views),
                               atol=1e-5)

    dss = cfg.model_copy(update={"mine": cfg.mine.model_copy(update={"miner": "mixed", "geo_negatives": 0})})
    run_round(dss, 1, model_path=checkpoint, encoder="block-0")
    here = round_dir(cfg.run_dir, 1)
    for folder, encoder, values in (("embeddings", first, texts), ("view_embeddings", second, views)):
        ids, vectors = read_embeddings(here.join(folder).url)
        order = [ids.tolist().index(str(row["id"])) for row in rows]
        np.testing.assert_allclose(vectors[order], encoder.encode(values), atol=1e-5, err_msg=folder)
