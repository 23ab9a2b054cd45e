"""The Ray Train loop on a tiny mined round: checkpoints both libraries load, resume, whole batches per worker."""

import inspect
import json
import os

import numpy as np
import pandas as pd
import pytest

from hardneg.config import TrainConfig
from hardneg.errors import InputError
from hardneg.trainers.batches import batch_texts, group_batches


def docstring_pairs(count=64):
    """(summary line, rest of the docstring) of stdlib functions: real text pairs that belong together."""
    import collections, json as json_mod, os as os_mod, re, shutil, string, textwrap, inspect as inspect_mod

    pairs = []
    for module in (os_mod, re, shutil, textwrap, json_mod, string, collections, inspect_mod):
        for name, member in sorted(vars(module).items()):
            doc = inspect.getdoc(member) if callable(member) else None
            if not doc or name.startswith("_"):
                continue
            head, _, rest = doc.partition("\n")
            rest = " ".join(rest.split())
            if len(head) > 15 and len(rest) > 40 and head not in {p[0] for p in pairs}:
                pairs.append((head, rest[:300]))
    assert len(pairs) >= count
    return pairs[:count]


def mined_frame(count=64, batch_size=None):
    """The mined-round contract; a row's negatives are the next rows' positives (and their batch mates in batch mode)."""
    pairs = docstring_pairs(count)
    rows = []
    for i, (query, positive) in enumerate(pairs):
        others = [(i + step) % count for step in (1, 2)]
        if batch_size:
            start = i // batch_size * batch_size
            others = [start + (i - start + step) % batch_size for step in (1, 2)]
        rows.append({
            "query_id": f"q{i}", "query": query, "positive_id": f"d{i}", "positive": positive, "positive_score": 0.9,
            "negative_ids": [f"d{j}" for j in others], "negatives": [pairs[j][1] for j in others],
            "negative_scores": [0.5, 0.4], "round": 0, "encoder": "tiny",
        })
    frame = pd.DataFrame(rows)
    if batch_size:
        frame["batch_id"] = np.arange(count, dtype=np.int64) // batch_size
    return frame


# --- pure pieces ---------------------------------------------------------------------------------


def test_group_batches_yields_whole_batches_of_this_rank():
    frame = pd.DataFrame({"query": list("abcdefg"), "positive": list("ABCDEFG"), "negatives": [[]] * 7,
                          "batch_id": [0, 0, 1, 1, 1, 2, 3]})
    chunks = [frame.iloc[:3], frame.iloc[3:6], frame.iloc[6:]]  # batch 1 spans two chunks
    rank0 = [b["query"].tolist() for b in group_batches(chunks, rank=0, world_size=2)]
    rank1 = [b["query"].tolist() for b in group_batches(chunks, rank=1, world_size=2)]
    assert rank0 == [["a", "b"], ["f"]]
    assert rank1 == [["c", "d", "e"], ["g"]]


def test_group_batches_rejects_a_batch_that_is_not_contiguous():
    frame = pd.DataFrame({"query": list("abc"), "positive": list("ABC"), "negatives": [[]] * 3, "batch_id": [0, 1, 0]})
    with pytest.raises(InputError, match="batch_id 0 are not contiguous"):
        list(group_batches([frame]))


def test_group_batches_names_missing_columns():
    with pytest.raises(InputError, match=r"lacks column\(s\) \['batch_id'\]"):
        list(group_batches([pd.DataFrame({"query": ["a"], "positive": ["A"], "negatives": [[]]})]))


def test_batch_texts_pads_short_rows_and_masks_them():
    frame = pd.DataFrame({"query": ["q0", "q1"], "positive": ["p0", "p1"], "negatives": [["n0a", "n0b", "n0c"], ["n1a"]]})
    queries, positives, negatives, mask = batch_texts(frame, negatives_per_row=2)
    assert (queries, positives, negatives) == (["q0", "q1"], ["p0", "p1"], ["n0a", "n0b", "n1a", ""])
    assert mask.tolist() == [[True, True], [True, False]]


# --- Ray Train -------------------------------------------------------------------------------------


def embed_pairs(model_dir, texts):
    from hardneg.encoder import Encoder

    return Encoder.load(model_dir).encode(texts)


@pytest.mark.slow  # the default run stays under 8 minutes (issue 11)
def test_fit_round_checkpoints_loadable_and_resumes(ray_session, tiny_model_path, tmp_path):
    import ray
    from sentence_transformers import SentenceTransformer

    from hardneg.encoder import Encoder
    from hardneg.trainers.evaluate import retrieval_metrics
    from hardneg.trainers.fit import fit_round

    frame = mined_frame(64)
    frame.to_parquet(tmp_path / "round0.parquet")
    cfg = TrainConfig(batch_size=8, learning_rate=1e-3, warmup_ratio=0.1, negatives_per_row=1, max_steps_per_epoch=6)
    storage = str(tmp_path / "checkpoints")
    queries, positives = frame["query"].tolist(), frame["positive"].tolist()
    relevant = [{i} for i in range(len(frame))]
    before = retrieval_metrics(embed_pairs(tiny_model_path, queries), embed_pairs(tiny_model_path, positives), relevant)

    first = fit_round(cfg, tiny_model_path, ray.data.read_parquet(str(tmp_path / "round0.parquet")), storage, "hn", epochs=2)
    assert (first.metrics["steps"], first.metrics["epoch"]) == (12, 2)
    assert np.isfinite(first.metrics["loss"])
    after = retrieval_metrics(embed_pairs(first.checkpoint_path, queries), embed_pairs(first.checkpoint_path, positives), relevant)
    assert after["recall@10"] > before["recall@10"]

    # the checkpoint embeds the same through hardneg's Encoder and sentence-transformers
    ours = Encoder.load(first.checkpoint_path).encode(queries[:8])
    theirs = SentenceTransformer(first.checkpoint_path, device="cpu").encode(queries[:8], normalize_embeddings=False)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.9999

    # a second fit under the same name starts from that checkpoint, on a new round
    frame.iloc[::-1].to_parquet(tmp_path / "round1.parquet")
    second = fit_round(cfg, tiny_model_path, ray.data.read_parquet(str(tmp_path / "round1.parquet")), storage, "hn", epochs=1)
    assert (second.metrics["steps"], second.metrics["epoch"]) == (18, 3)
    assert second.checkpoint_path != first.checkpoint_path
    with open(os.path.join(second.checkpoint_path, "trainer_state.json")) as handle:
        assert json.load(handle)["global_step"] == 18


def record_batches_loop(config):
    """A worker that records which batches it reads, through the same reader and data config as fit_round."""
    import ray.train

    from hardneg.trainers.batches import read_batches

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seen = {int(b["batch_id"].iloc[0]): b["query_id"].tolist()
            for b in read_batches(ray.train.get_dataset_shard("train"), 8, True, rank, world)}
    with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as handle:
        json.dump(seen, handle)
    ray.train.report({"batches": len(seen)})


@pytest.mark.slow  # the default run stays under 8 minutes (issue 11)
def test_batch_mode_gives_each_whole_batch_to_exactly_one_of_two_workers(ray_session, tmp_path):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hardneg.trainers.fit import dataset_config

    frame = mined_frame(64, batch_size=8)
    # small row groups so batches straddle blocks
    frame.to_parquet(tmp_path / "round.parquet", row_group_size=5)
    TorchTrainer(
        record_batches_loop, train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="batches", storage_path=str(tmp_path / "ckpt")),
        datasets={"train": ray.data.read_parquet(str(tmp_path / "round.parquet")).repartition(7)},
        dataset_config=dataset_config(batch_mode=True),
    ).fit()
    seen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(map(int, seen[0])) == [0, 2, 4, 6] and sorted(map(int, seen[1])) == [1, 3, 5, 7]
    for rank_seen in seen:
        for batch_id, query_ids in rank_seen.items():
            assert query_ids == [f"q{i}" for i in range(int(batch_id) * 8, int(batch_id) * 8 + 8)]


@pytest.mark.slow
def test_fit_round_batch_mode_two_workers(ray_session, tiny_model_path, tmp_path):
    import ray

    from hardneg.encoder import Encoder
    from hardneg.trainers.fit import fit_round

    mined_frame(64, batch_size=8).to_parquet(tmp_path / "round.parquet")
    cfg = TrainConfig(batch_size=8, learning_rate=1e-3, negatives_per_row=1, num_workers=2)
    result = fit_round(cfg, tiny_model_path, ray.data.read_parquet(str(tmp_path / "round.parquet")),
                       str(tmp_path / "ckpt"), "batch2", epochs=1, resources_per_worker={"CPU": 0.5})
    assert (result.metrics["steps"], result.metrics["epoch"]) == (4, 1)
    assert Encoder.load(result.checkpoint_path).encode(["a query"]).shape == (1, 32)
