"""The embed pipeline: Ray Data -> Encoder actors -> committed Parquet shards."""

import json

import numpy as np
import pytest
from conftest import in_process, write_jsonl

from hardneg import storage
from hardneg.config import parse_config
from hardneg.errors import StorageError
from hardneg.pipelines.embed import embed_corpus


def read_embeddings(path):
    table = storage.read_table(str(path))
    return table.column("id").to_pylist(), np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def test_embeddings_equal_sentence_transformers(ray_session, real_pairs, packaged_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    # 300 texts in 3 blocks: enough for length-sorted batches that cross blocks, small enough that
    # the test stays short on a busy machine (the reference encode runs in this process).
    texts = sorted({pair["anchor"] for pair in real_pairs})[:300]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    cfg = parse_config({"corpus": {"path": corpus}, "embed": {"block_size": 128}})
    manifest = embed_corpus(cfg, str(tmp_path / "out"))

    assert manifest["rows"] == len(texts) and manifest["dim"] == 384 and manifest["pooling"] == "mean"
    ids, vectors = read_embeddings(tmp_path / "out")
    assert sorted(ids) == list(range(len(texts)))
    expected = SentenceTransformer(packaged_model_path, device="cpu").encode(texts, normalize_embeddings=True, batch_size=64)
    cosine = np.sum(vectors * expected[ids], axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(expected[ids], axis=1)
    assert cosine.min() >= 0.9999
    on_disk = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert on_disk["rows"] == len(texts) and on_disk["model_hash"] == manifest["model_hash"]


def test_a_model_saved_by_sentence_transformers_6_is_cut_where_it_cuts(ray_session, real_pairs, tiny_model_path, tmp_path):
    """sentence-transformers 6 saves ``max_seq_length`` as the tokenizer's ``model_max_length``, not in
    ``sentence_bert_config.json``: the embed stage must still cut texts there (it cut at 512, and
    ``hardneg.mine_hard_negatives`` with a model object mined from other vectors than ST's)."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(tiny_model_path, device="cpu")
    reference.max_seq_length = 16
    saved = str(tmp_path / "st6")
    reference.save(saved)
    assert "max_seq_length" not in json.loads((tmp_path / "st6" / "sentence_bert_config.json").read_text())
    texts = sorted({pair["positive"][:300] for pair in real_pairs})[:40]  # 30-90 tokens each: past 16, within BERT's 128
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    cfg = parse_config({"corpus": {"path": corpus}, "model": {"path": saved}})
    with in_process(cfg):  # where the texts are cut is the point; both roads share the tokenize step
        manifest = embed_corpus(cfg, str(tmp_path / "out"))
    assert manifest["max_length"] == 16
    ids, vectors = read_embeddings(tmp_path / "out")
    expected = SentenceTransformer(saved, device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(vectors, expected[ids], atol=1e-5)


def test_float16_shards_and_committed_output_is_never_overwritten(ray_session, tiny_model_path, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": f"document number {i}"} for i in range(50)])
    cfg = parse_config({"corpus": {"path": corpus}, "model": {"path": tiny_model_path}, "embed": {"dtype": "float16"}})
    with in_process(cfg):  # the shards' type and the commit rule are the point (test_partial_output… writes on Ray)
        embed_corpus(cfg, str(tmp_path / "out"))
        table = storage.read_table(str(tmp_path / "out"))
        assert str(table.schema.field("embedding").type) == "fixed_size_list<element: halffloat>[32]"
        assert sorted(table.column("id").to_pylist()) == sorted(f"d{i}" for i in range(50))
        with pytest.raises(StorageError, match="already committed"):
            embed_corpus(cfg, str(tmp_path / "out"))


def test_partial_output_without_manifest_is_redone(ray_session, tiny_model_path, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": i, "text": f"text {i}"} for i in range(20)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale-half-written.parquet").write_bytes(b"garbage")
    cfg = parse_config({"corpus": {"path": corpus}, "model": {"path": tiny_model_path}})
    manifest = embed_corpus(cfg, str(out))
    assert manifest["rows"] == 20
    assert not (out / "stale-half-written.parquet").exists()
    assert storage.read_table(str(out)).num_rows == 20


def test_a_rerun_after_a_crash_embeds_only_the_unfinished_parts(ray_session, tiny_model_path, tmp_path):
    import os

    (tmp_path / "corpus").mkdir()
    for f in range(4):
        write_jsonl(tmp_path / "corpus" / f"part{f}.jsonl", [{"id": f"f{f}-{i}", "text": f"text {f} {i}"} for i in range(30)])
    cfg = parse_config({"corpus": {"path": str(tmp_path / "corpus")}, "model": {"path": tiny_model_path},
                        "embed": {"part_rows": 60}})
    out = tmp_path / "out"
    # In process: which parts are kept and redone is the point, and both roads share it (a Ray run of one
    # part starts an actor pool, about 10 s here); test_a_killed_encoder_actor… covers Ray's own restarts.
    with in_process(cfg):
        first = embed_corpus(cfg, str(out))
    assert first["parts"] == 2 and first["resumed_rows"] == 0
    before = read_embeddings(str(out))
    kept = {name: os.stat(out / "part-00000" / name).st_mtime_ns for name in os.listdir(out / "part-00000")}

    (out / "MANIFEST.json").unlink()  # the driver died while embedding part 1: part 0 is committed, part 1 is half written
    (out / "part-00001" / "MANIFEST.json").unlink()
    for name in os.listdir(out / "part-00001"):
        (out / "part-00001" / name).write_bytes(b"half a file")
    with in_process(cfg):
        again = embed_corpus(cfg, str(out))
    assert again["resumed_rows"] == 60 and again["rows"] == 120  # half of the work was saved
    assert {name: os.stat(out / "part-00000" / name).st_mtime_ns for name in os.listdir(out / "part-00000")} == kept
    after = read_embeddings(str(out))
    # Readers match vectors to rows by id: a part's shards (one a block, named by attempt and a random suffix)
    # come in any order, so the redone part's rows may too. Every id once, with the vector it had.
    assert sorted(after[0]) == sorted(f"f{f}-{i}" for f in range(4) for i in range(30))
    assert list(after[0])[:60] == list(before[0])[:60]  # the kept part, as it was
    vector_of = dict(zip(before[0], before[1]))
    np.testing.assert_allclose(after[1], np.stack([vector_of[i] for i in after[0]]), atol=1e-6)


def test_s3_round_trip(ray_session, s3_storage, tiny_model_path, tmp_path):
    import boto3

    rows = [{"id": i, "text": f"passage {i} about topic {i % 7}"} for i in range(60)]
    s3 = boto3.client("s3", endpoint_url=s3_storage, region_name="us-east-1")
    body = "\n".join(json.dumps(row) for row in rows).encode()
    s3.put_object(Bucket="hardneg-test", Key="corpus/part-0.jsonl", Body=body[: len(body) // 2].rsplit(b"\n", 1)[0])
    s3.put_object(Bucket="hardneg-test", Key="corpus/part-1.jsonl", Body=body[len(body[: len(body) // 2].rsplit(b"\n", 1)[0]) + 1 :])
    cfg = parse_config({"corpus": {"path": "s3://hardneg-test/corpus/"}, "model": {"path": tiny_model_path}})
    manifest = embed_corpus(cfg, "s3://hardneg-test/runs/emb")
    assert manifest["rows"] == 60
    assert storage.is_committed("s3://hardneg-test/runs/emb")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="hardneg-test", Prefix="runs/emb/")["Contents"]]
    assert "runs/emb/MANIFEST.json" in keys
    table = storage.read_table("s3://hardneg-test/runs/emb/")
    assert sorted(table.column("id").to_pylist()) == list(range(60))
