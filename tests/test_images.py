"""Images, mechanically end to end: a tiny random ViT built here, real photographs from scikit-learn cut into
tiles as places (two views each: the tile and its mirror image), embedded by Ray, GPS batches, one training
step, a similarity (DSS) re-mine with the checkpoint, and a checkpoint that reloads and embeds identically."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hardneg import storage
from hardneg.cli import main
from hardneg.config import CorpusConfig, parse_config
from hardneg.encoder import Encoder
from hardneg.errors import InputError
from hardneg.images import open_image
from hardneg.places import prepare_places
from hardneg.rundir import round_dir
from hardneg.search import read_embeddings
from conftest import in_process, write_jsonl

TILE = 64  # pixels; each tile is a place
DEGREES_PER_TILE = 0.01  # about 1.1 km between neighbouring tiles
GRID = (4, 6)  # tiles per photograph (rows, columns): 2 photographs, 48 places


@pytest.fixture(scope="module")
def vit_path(tmp_path_factory):
    """A tiny random ViT (32 x 32 input, patches of 8, hidden 32, 2 layers) and its image processor, saved as
    transformers saves them: no sentence-transformers config, so vectors are normalised by default."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)
    path = str(tmp_path_factory.mktemp("tiny_vit"))
    ViTModel(config).eval().save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """scikit-learn's two sample photographs cut into 64 x 64 tiles saved as PNG; a place per tile at its grid
    position (0.01 degree a tile, the photographs a degree apart), view A the tile, view B its mirror image."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = tmp_path_factory.mktemp("tiles")
    rows = []
    for number, photo in enumerate(load_sample_images().images):
        for r in range(GRID[0]):
            for c in range(GRID[1]):
                tile = Image.fromarray(photo[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE])
                name = f"{number}_{r}_{c}"
                tile.save(folder / f"{name}.png")
                tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"{name}_mirror.png")
                rows.append({"id": name, "image": str(folder / f"{name}.png"), "view": str(folder / f"{name}_mirror.png"),
                             "lat": 40 + number + r * DEGREES_PER_TILE, "lon": 10 + c * DEGREES_PER_TILE})
    return write_jsonl(folder / "places.jsonl", rows), rows


@pytest.fixture(scope="module")
def places_parquet(places):
    """The same places as Parquet, view A as the encoded PNG itself (binary), view B as its path."""
    path, rows = places
    table = pa.table({"id": [row["id"] for row in rows], "image": [open(row["image"], "rb").read() for row in rows],
                      "view": [row["view"] for row in rows], "lat": [row["lat"] for row in rows], "lon": [row["lon"] for row in rows]})
    pq.write_table(table, path.replace(".jsonl", ".parquet"))
    return path.replace(".jsonl", ".parquet"), table.to_pylist()


def test_a_vision_encoder_pools_normalises_and_reloads_as_transformers_saves_it(vit_path, places, tmp_path):
    from transformers import AutoModel

    _, rows = places
    encoder = Encoder.load(vit_path)
    paths = [row["image"] for row in rows[:5]]
    vectors = encoder.encode_images(paths)
    assert encoder.tokenizer is None and encoder.normalize and vectors.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    with open(paths[0], "rb") as handle:  # bytes embed as the file they came from
        np.testing.assert_allclose(encoder.encode_images([handle.read()]), vectors[:1], atol=1e-6)
    model = AutoModel.from_pretrained(vit_path).eval()
    pixels = torch.from_numpy(np.asarray(encoder.image_processor(images=[open_image(p) for p in paths], return_tensors="np")["pixel_values"]))
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(model(pixel_values=pixels).pooler_output, dim=-1).numpy()
    np.testing.assert_allclose(vectors, pooled, atol=1e-6)  # pooler_output, L2-normalised

    encoder.save(str(tmp_path / "saved"))
    again = Encoder.load(str(tmp_path / "saved"))
    assert type(AutoModel.from_pretrained(str(tmp_path / "saved"))).__name__ == "ViTModel"
    np.testing.assert_array_equal(again.encode_images(paths), vectors)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory, packaged_model_path):
    """A tiny random CLIP (text and vision towers of hidden 32, projections of 16) with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = AutoTokenizer.from_pretrained(packaged_model_path, local_files_only=True)
    torch.manual_seed(0)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(text_config={**tower, "vocab_size": tokenizer.vocab_size, "max_position_embeddings": 64},
                        vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16)
    path = str(tmp_path_factory.mktemp("clip"))
    CLIPModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_a_dual_model_puts_texts_and_images_in_one_space(clip_path, places):
    from transformers import CLIPModel

    _, rows = places
    path = clip_path
    encoder = Encoder.load(path)
    texts, images = encoder.encode(["a red flower", "a temple roof"]), encoder.encode_images([row["image"] for row in rows[:3]])
    assert encoder.is_dual and texts.shape == (2, 16) and images.shape == (3, 16)
    model = CLIPModel.from_pretrained(path).eval()
    with torch.no_grad():
        features = model.get_image_features(pixel_values=torch.from_numpy(
            np.asarray(encoder.image_processor(images=[open_image(row["image"]) for row in rows[:3]], return_tensors="np")["pixel_values"])))
    features = features if torch.is_tensor(features) else features.pooler_output
    np.testing.assert_allclose(images, torch.nn.functional.normalize(features, dim=-1).numpy(), atol=1e-6)
    assert (texts @ images.T).shape == (2, 3)  # text-to-image retrieval: one space


@pytest.mark.parametrize("in_process", ["never", "always"], ids=["on Ray", "in process"])
def test_embed_reads_paths_s3_urls_and_parquet_bytes_in_one_run_and_matches_the_encoder(ray_session, s3_storage, vit_path, places,
                                                                                        places_parquet, tmp_path, in_process):
    import boto3

    from hardneg.corpus import validate_corpus
    from hardneg.pipelines.embed import EmbedTarget, embed_corpora
    from hardneg.ray_runtime import round_executor

    path, rows = places
    s3 = boto3.client("s3", endpoint_url=s3_storage, region_name="us-east-1")
    for row in rows:
        s3.put_object(Bucket="hardneg-test", Key=f"tiles/{row['id']}.png", Body=open(row["image"], "rb").read())
    urls = [{"id": row["id"], "image": f"s3://hardneg-test/tiles/{row['id']}.png"} for row in rows]
    missing = write_jsonl(tmp_path / "missing.jsonl", urls[:2] + [{"id": "x", "image": "s3://hardneg-test/tiles/x.png"}])
    with pytest.raises(InputError, match=r"missing.jsonl: row 2, column image: no such file s3://hardneg-test/tiles/x.png"):
        validate_corpus(CorpusConfig(path=missing))
    cfg = parse_config({"model": {"path": vit_path}, "corpus": {"path": path}, "ray": {"in_process": in_process}})
    targets = [EmbedTarget(str(tmp_path / "paths"), cfg.corpus), EmbedTarget(str(tmp_path / "bytes"), CorpusConfig(path=places_parquet[0])),
               EmbedTarget(str(tmp_path / "s3"), CorpusConfig(path=write_jsonl(tmp_path / "urls.jsonl", urls)))]
    with round_executor(cfg, [path]):
        manifests = embed_corpora(cfg, targets)  # one Ray Data run and one Encoder actor pool, or one Encoder here
    assert [(m["rows"], m["modality"], m["dim"]) for m in manifests] == [(len(rows), "image", 32)] * 3
    expected = Encoder.load(vit_path).encode_images([row["image"] for row in rows])
    for target in targets:
        ids, vectors = read_embeddings(target.output)
        assert list(ids) == [row["id"] for row in rows]
        np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_a_training_step_on_rows_of_images_moves_the_vision_encoder(vit_path, places_parquet):
    """The worker's step alone (no Ray): queries as bytes, positives and a short row's negatives as paths."""
    import pandas as pd

    from hardneg.config import TrainConfig
    from hardneg.trainers.losses import LogitScale
    from hardneg.trainers.train_loop import ContrastiveModel, _train_step

    _, rows = places_parquet
    cfg = TrainConfig(negatives_per_row=1, learning_rate=1e-2)
    frame = pd.DataFrame({"query": [row["image"] for row in rows[:4]], "positive": [row["view"] for row in rows[:4]],
                          "negatives": [[rows[5]["view"]], [], [rows[6]["view"]], [rows[7]["view"]]]})
    encoder = Encoder.load(vit_path)
    model = ContrastiveModel(encoder, LogitScale(cfg.temperature))
    before = encoder.encode_images([row["image"] for row in rows[:4]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    loss = _train_step(model, encoder, frame, cfg, "", optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), "cpu")
    assert np.isfinite(loss) and loss > 0
    assert np.abs(encoder.encode_images([row["image"] for row in rows[:4]]) - before).max() > 1e-4


def test_a_training_step_on_text_queries_and_images_moves_both_towers_of_a_dual_model(clip_path, places_parquet):
    """CLIP-style training rows (text queries, image positives and negatives): the queries go through the text
    tower, the images through the vision tower, and one step moves both."""
    import pandas as pd

    from hardneg.config import TrainConfig
    from hardneg.trainers.losses import LogitScale
    from hardneg.trainers.train_loop import ContrastiveModel, _train_step

    _, rows = places_parquet
    cfg = TrainConfig(negatives_per_row=1, learning_rate=1e-2)
    texts = [f"photograph {row['id'][0]}, tile {row['id'][2:]}" for row in rows[:4]]
    frame = pd.DataFrame({"query": texts, "positive": [row["view"] for row in rows[:4]],
                          "negatives": [[rows[5]["view"]], [], [rows[6]["view"]], [rows[7]["view"]]]})
    encoder = Encoder.load(clip_path)
    model = ContrastiveModel(encoder, LogitScale(cfg.temperature))
    images = [row["view"] for row in rows[:4]]
    before_texts, before_images = encoder.encode(texts), encoder.encode_images(images)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    loss = _train_step(model, encoder, frame, cfg, "", optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), "cpu",
                       views=("text", "image"))
    assert np.isfinite(loss) and loss > 0
    assert np.abs(encoder.encode(texts) - before_texts).max() > 1e-4
    assert np.abs(encoder.encode_images(images) - before_images).max() > 1e-4


def test_an_unreadable_image_is_refused_at_the_door_naming_file_row_and_column(vit_path, places, tmp_path, capsys):
    path, rows = places
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    bad = [dict(row) for row in rows[:4]]
    bad[1]["image"] = str(tmp_path / "gone.png")
    bad[3]["image"] = str(tmp_path / "broken.png")
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": row["id"], "image": row["image"]} for row in bad])
    assert main(["embed", corpus, str(tmp_path / "out"), "--model-path", vit_path]) == 2
    err = capsys.readouterr().err
    assert f"{corpus}: row 1, column image: no such file {tmp_path / 'gone.png'}" in err
    assert f"{corpus}: row 3, column image: {tmp_path / 'broken.png'}: cannot decode the image" in err
    assert not (tmp_path / "out").exists()

    views = [dict(row) for row in rows[:4]]
    views[2]["view"] = str(tmp_path / "broken.png")
    places_file = write_jsonl(tmp_path / "places.jsonl", views)
    with pytest.raises(InputError, match=r"places.jsonl: row 2, column view: .*broken.png: cannot decode"):
        prepare_places(CorpusConfig(path=places_file))
    assert main(["mine", places_file, str(tmp_path / "run"), "--miner", "geographic", "--min-km", "0.5"]) == 2
    assert "row 2, column view" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_model_that_cannot_read_the_corpus_is_refused_at_the_door(vit_path, tiny_model_path, places, tmp_path, capsys):
    path, _ = places
    assert main(["embed", path, str(tmp_path / "out"), "--model-path", tiny_model_path]) == 2
    assert "the corpus (corpus.image_column) holds images, but the model has no image processor" in capsys.readouterr().err
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"id": 1, "text": "a temple roof"}])
    assert main(["embed", texts, str(tmp_path / "out"), "--model-path", vit_path]) == 2
    assert "the corpus (corpus.text_column) holds texts, but the model has no tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a Ray Train fit and a Ray Data run: 40 to 70 s of call on a busy 2-core box (65 to 80 s with setup)
def test_gps_batches_one_training_step_a_dss_remine_and_a_checkpoint_that_embeds_identically(ray_session, vit_path, places_parquet, tmp_path):
    """The places as Parquet: view A the PNG bytes, view B a path; both reach the trainer and Ray's Encoder actors."""
    from transformers import AutoModel

    from hardneg.miners import haversine_km
    from hardneg.pipelines.heldout import heldout_ids
    from hardneg.pipelines.loop import row_views, train_loop
    from hardneg.pipelines.remine import remine, run_state

    path, rows = places_parquet
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"), "model": {"path": vit_path}, "corpus": {"path": path},
        "mine": {"miner": "geographic", "num_negatives": 8, "min_km": 0.5, "max_km": 50, "batches": True,
                 "composed_batch_size": 8, "near_neighbours": 3, "random_neighbours": 2},
        "embed": {"batch_size": 16},
        "train": {"epochs": 2, "remine_every": 1, "gps_epochs": 1, "batch_size": 8, "max_steps_per_epoch": 1,
                  "symmetric": True, "learnable_scale": True, "learning_rate": 1e-2, "negatives_per_row": 0},
    })
    [block] = train_loop(cfg, max_blocks=1)  # round 0 (GPS batches) and one training step on it
    gps = run_state(cfg.run_dir).rounds[0].manifest
    assert row_views(cfg, gps) == ("image", "image")  # the places' values, both sides
    assert gps["miner"] == "geographic" and block.round == 0 and block.metrics["steps"] == 1
    batches = storage.read_table(round_dir(cfg.run_dir, 0).join("batches").url).to_pandas()
    by_id = {row["id"]: row for row in rows}
    held = heldout_ids(list(by_id), cfg.train)  # train.eval_fraction of a cross-view corpus: evaluated, never batched
    assert len(held) == gps["heldout"]["places"] and "recall@1" in gps["figures"]["eval"]
    assert sorted(batches["query_id"]) == sorted(set(by_id) - held)  # every other place once
    for _, batch in batches.groupby("batch_id"):
        assert len(batch) <= 8
        lat, lon = np.array([by_id[i]["lat"] for i in batch["query_id"]]), np.array([by_id[i]["lon"] for i in batch["query_id"]])
        km = haversine_km(lat[:, None], lon[:, None], lat[None], lon[None])
        assert (km[~np.eye(len(batch), dtype=bool)] >= 0.5).all()  # no two views of one place in a batch
    assert all(row.query == by_id[row.query_id]["image"] and row.positive == by_id[row.query_id]["view"] for row in batches.itertuples())

    status, dss = remine(cfg)  # round 1: similarity over the places with the checkpoint (train.gps_epochs 1)
    assert status == "done" and dss["miner"] == "mixed" and dss["encoder"] == block.id and dss["model"] == block.path
    checkpoint = Encoder.load(block.path)
    ids, stored = read_embeddings(round_dir(cfg.run_dir, 1).join("embeddings").url)
    fresh = checkpoint.encode_images([by_id[i]["image"] for i in ids])
    assert (np.sum(fresh * stored, axis=1) >= 1 - 1e-6).all()  # the checkpoint reloads and embeds as Ray's actors did
    base = Encoder.load(vit_path).encode_images([by_id[i]["image"] for i in ids])
    assert np.abs(base - fresh).max() > 1e-4  # ... and the training step changed it
    hf = AutoModel.from_pretrained(block.path).eval()
    with torch.no_grad():
        pixels = torch.from_numpy(np.asarray(checkpoint.image_processor(images=[open_image(by_id[ids[0]]["image"])], return_tensors="np")["pixel_values"]))
        pooled = torch.nn.functional.normalize(hf(pixel_values=pixels).pooler_output, dim=-1).numpy()[0]
    assert float(pooled @ fresh[0]) >= 1 - 1e-6  # transformers loads the checkpoint too

    # DSS as Sample4Geo ranks: a place's view A (the tile) against the other places' view B (their mirror images)
    view_ids, views = read_embeddings(round_dir(cfg.run_dir, 1).join("view_embeddings").url)
    np.testing.assert_allclose(views, checkpoint.encode_images([by_id[i]["view"] for i in view_ids]), atol=1e-5)
    vector_of, view_of = dict(zip(ids, fresh)), dict(zip(view_ids, views))
    mined = storage.read_table(round_dir(cfg.run_dir, 1).join("mined").url).to_pylist()
    assert len(mined) == len(rows) - len(held)
    for row in mined:
        assert row["query"] == by_id[row["query_id"]]["image"] and row["positive"] == by_id[row["query_id"]]["view"]
        assert row["negatives"] == [by_id[i]["view"] for i in row["negative_ids"]] and row["query_id"] not in row["negative_ids"]
        assert set(row["negative_source"]) == {"similarity"} and min(row["negative_km"]) >= 0.5
        assert not held & set(row["negative_ids"])
        scores = [float(vector_of[row["query_id"]] @ view_of[i]) for i in row["negative_ids"]]
        np.testing.assert_allclose(row["negative_scores"], scores, atol=1e-5)
        assert row["negative_scores"] == sorted(row["negative_scores"], reverse=True)
    assert json.loads(open(os.path.join(round_dir(cfg.run_dir, 1).join("embeddings").path, "MANIFEST.json")).read())["modality"] == "image"



def test_text_queries_mine_hard_negative_images_with_a_dual_model(ray_session, clip_path, places, tmp_path):
    """Text-to-image data (CLIP-style): text queries whose positives are images of a corpus of images. The
    round embeds the queries with the text tower and the images with the vision tower, in one space, and
    its negatives are the other images (their paths) that score highest against the query."""
    from hardneg.door import check_round
    from hardneg.pipelines.loop import row_views
    from hardneg.pipelines.run import run_round

    _, rows = places
    image_of = {row["id"]: row["image"] for row in rows}
    row_of = {row["id"]: i for i, row in enumerate(rows)}
    corpus = write_jsonl(tmp_path / "images.jsonl", [{"id": row["id"], "image": row["image"]} for row in rows])
    asked = [{"query_id": f"q{i}", "query": f"photograph {row['id'][0]}, tile {row['id'][2:]}", "positive_ids": [row["id"]]}
             for i, row in enumerate(rows[::4])]
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"path": clip_path}, "corpus": {"path": corpus},
                        "queries": {"path": write_jsonl(tmp_path / "queries.jsonl", asked), "format": "queries"},
                        "mine": {"num_negatives": 3, "range_max": 20}})
    check_round(cfg)
    with in_process(cfg):  # the towers are the point
        manifest = run_round(cfg)
    mined = storage.read_table(manifest["outputs"]["mined"]).to_pylist()
    assert row_views(cfg, manifest) == ("text", "image")  # what the training loop tells the trainer the rows hold

    encoder = Encoder.load(clip_path)
    images = encoder.encode_images([row["image"] for row in rows])
    texts = encoder.encode([query["query"] for query in asked])
    assert [row["query_id"] for row in mined] == [query["query_id"] for query in asked]
    for row, query, text in zip(mined, asked, texts):
        assert row["positive_id"] == query["positive_ids"][0] and row["positive"] == image_of[row["positive_id"]]
        scores = images @ text
        ranked = [rows[i]["id"] for i in np.argsort(-scores, kind="stable") if rows[i]["id"] != row["positive_id"]]
        assert row["negative_ids"] == ranked[:3]  # the hardest images, by the text tower against the vision tower
        assert row["negatives"] == [image_of[i] for i in row["negative_ids"]]
        np.testing.assert_allclose(row["negative_scores"], scores[[row_of[i] for i in row["negative_ids"]]], atol=1e-4)


def test_text_queries_over_images_need_a_model_that_reads_both(vit_path, places, tmp_path):
    from hardneg.door import check_round
    from hardneg.errors import ConfigError

    _, rows = places
    corpus = write_jsonl(tmp_path / "images.jsonl", [{"id": row["id"], "image": row["image"]} for row in rows])
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"query_id": "q", "query": "a temple roof", "positive_ids": [rows[0]["id"]]}])
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"path": vit_path}, "corpus": {"path": corpus},
                        "queries": {"path": queries, "format": "queries"}})
    with pytest.raises(ConfigError, match=r"the queries \(queries.path\) holds texts, but the model has no tokenizer"):
        check_round(cfg)
    assert not (tmp_path / "run").exists()


def test_image_queries_mine_hard_negative_images_and_are_checked_at_the_door(ray_session, vit_path, tiny_model_path, places, tmp_path):
    """Image-to-image data: queries that ask with an image (``query_image``: each tile's mirror image) whose positive
    is its tile in a corpus of images. The queries are embedded as images, the negatives are the corpus images
    that score highest against the query image, and the rows carry the query image as given. A model without
    an image processor, and an unreadable query image, are refused at the door."""
    from hardneg.door import check_round
    from hardneg.errors import ConfigError, InputError
    from hardneg.pipelines.loop import row_views
    from hardneg.pipelines.run import run_round

    _, rows = places
    row_of = {row["id"]: i for i, row in enumerate(rows)}
    corpus = write_jsonl(tmp_path / "images.jsonl", [{"id": row["id"], "image": row["image"]} for row in rows])
    asked = [{"query_id": f"q{i}", "query_image": row["view"], "positive_ids": [row["id"]]} for i, row in enumerate(rows[::3])]
    settings = {"run_dir": str(tmp_path / "run"), "model": {"path": vit_path}, "corpus": {"path": corpus},
                "queries": {"path": write_jsonl(tmp_path / "queries.jsonl", asked), "format": "queries"},
                "mine": {"num_negatives": 3, "range_max": 20}}
    cfg = parse_config(settings)
    check_round(cfg)
    with in_process(cfg):
        manifest = run_round(cfg)
    mined = storage.read_table(manifest["outputs"]["mined"]).to_pylist()
    assert row_views(cfg, manifest) == ("image", "image")

    encoder = Encoder.load(vit_path)
    images = encoder.encode_images([row["image"] for row in rows])
    queries = encoder.encode_images([query["query_image"] for query in asked])
    assert [row["query_id"] for row in mined] == [query["query_id"] for query in asked]
    for row, query, vector in zip(mined, asked, queries):
        assert row["query"] == query["query_image"] and row["positive_id"] == query["positive_ids"][0]
        scores = images @ vector
        ranked = [rows[i]["id"] for i in np.argsort(-scores, kind="stable") if rows[i]["id"] != row["positive_id"]]
        assert row["negative_ids"] == ranked[:3]
        np.testing.assert_allclose(row["negative_scores"], scores[[row_of[i] for i in row["negative_ids"]]], atol=1e-4)

    text_only = parse_config({**settings, "run_dir": str(tmp_path / "run2"), "model": {"path": tiny_model_path}})
    with pytest.raises(ConfigError, match=r"the queries \(queries.path\)"):
        check_round(text_only)
    broken = write_jsonl(tmp_path / "broken.jsonl", asked[:2] + [{**asked[2], "query_image": str(tmp_path / "missing.png")}])
    bad = parse_config({**settings, "run_dir": str(tmp_path / "run3"), "queries": {"path": broken, "format": "queries"}})
    with pytest.raises(InputError, match=r"broken.jsonl: row 2, column query_image"):
        check_round(bad)
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run3").exists()


def test_query_files_that_ask_in_two_ways_and_a_cross_encoder_over_image_queries_are_refused(vit_path, tiny_model_path, places,
                                                                                            tmp_path):
    """Queries ask with texts or with images, in every file alike, and images one way (paths or bytes); a
    cross-encoder scores text pairs, so it takes no image queries. Each is refused at the door, naming it."""
    from hardneg.door import check_round
    from hardneg.errors import ConfigError

    _, rows = places
    corpus = write_jsonl(tmp_path / "images.jsonl", [{"id": row["id"], "image": row["image"]} for row in rows])
    settings = {"model": {"path": vit_path}, "corpus": {"path": corpus}}

    def refused(error, folder: str, match: str, **extra) -> None:
        cfg = parse_config({**settings, **extra, "run_dir": str(tmp_path / f"run-{folder}"),
                            "queries": {"path": str(tmp_path / folder), "format": "queries"}})
        with pytest.raises(error, match=match):
            check_round(cfg)
        assert not (tmp_path / f"run-{folder}").exists()

    (tmp_path / "two_ways").mkdir()
    write_jsonl(tmp_path / "two_ways" / "a.jsonl", [{"query_id": "q0", "query_image": rows[0]["view"], "positive_ids": [rows[0]["id"]]}])
    write_jsonl(tmp_path / "two_ways" / "b.jsonl", [{"query_id": "q1", "query": "a roof", "positive_ids": [rows[1]["id"]]}])
    refused(InputError, "two_ways", r"some files ask with texts \(query\) and others with images \(query_image\)")

    (tmp_path / "bytes_and_paths").mkdir()
    pq.write_table(pa.table({"query_id": ["q0"], "query_image": [open(rows[0]["view"], "rb").read()], "positive_ids": [[rows[0]["id"]]]}),
                   tmp_path / "bytes_and_paths" / "a.parquet")
    write_jsonl(tmp_path / "bytes_and_paths" / "b.jsonl", [{"query_id": "q1", "query_image": rows[1]["view"], "positive_ids": [rows[1]["id"]]}])
    refused(InputError, "bytes_and_paths", r"some files give the query images as bytes and others as paths")

    (tmp_path / "images").mkdir()
    write_jsonl(tmp_path / "images" / "a.jsonl", [{"query_id": "q0", "query_image": rows[0]["view"], "positive_ids": [rows[0]["id"]]}])
    refused(ConfigError, "images", r"mine.cross_encoder: a cross-encoder scores text pairs; these queries are images",
            mine={"cross_encoder": tiny_model_path})


@pytest.fixture
def captioned(places, tmp_path):
    """The tiles as a text -> image cross-view corpus (``corpus.view_image_column``): a caption per place, its tile."""
    _, rows = places
    captioned = [{"id": row["id"], "text": f"photo {row['id'][0]} tile {row['id'][2:].replace('_', ' ')}", "view_image": row["image"],
                  "lat": row["lat"], "lon": row["lon"]} for row in rows]
    return write_jsonl(tmp_path / "captioned.jsonl", captioned), {row["id"]: row for row in captioned}


def test_a_text_to_image_cross_view_round_ranks_each_caption_against_the_other_places_images_with_a_dual_model(
        ray_session, clip_path, captioned, tmp_path):
    """One text view and one image view: the dual model embeds the captions with its text tower and the tiles
    with its vision tower, and the similarity half ranks a caption against the other places' tiles."""
    from hardneg.miners import haversine_km
    from hardneg.pipelines.loop import row_views
    from hardneg.pipelines.run import run_round

    corpus, by_id = captioned
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"path": clip_path}, "corpus": {"path": corpus},
                        "mine": {"miner": "mixed", "geo_negatives": 0, "num_negatives": 4, "min_km": 0.5}, "embed": {"batch_size": 16}})
    with in_process(cfg):  # the towers are the point (the ViT loop test runs a mixed round on Ray)
        manifest = run_round(cfg)
    assert row_views(cfg, manifest) == ("text", "image") and manifest["figures"]["similarity_of"] == "first view -> other places' view"
    encoder, here = Encoder.load(clip_path), round_dir(cfg.run_dir, 0)
    ids, texts = read_embeddings(here.join("embeddings").url)
    np.testing.assert_allclose(texts, encoder.encode([by_id[i]["text"] for i in ids]), atol=1e-5)
    view_ids, views = read_embeddings(here.join("view_embeddings").url)
    np.testing.assert_allclose(views, encoder.encode_images([by_id[i]["view_image"] for i in view_ids]), atol=1e-5)
    text_of, view_of = dict(zip(ids, texts)), dict(zip(view_ids, views))
    mined = storage.read_table(here.join("mined").url).to_pylist()
    assert len(mined) == len(by_id)
    for row in mined:
        assert row["query"] == by_id[row["query_id"]]["text"] and row["positive"] == by_id[row["query_id"]]["view_image"]
        assert row["negatives"] == [by_id[i]["view_image"] for i in row["negative_ids"]] and len(row["negative_ids"]) == 4
        allowed = sorted((float(text_of[row["query_id"]] @ view_of[i]), i) for i in by_id if i != row["query_id"]
                         and haversine_km(by_id[i]["lat"], by_id[i]["lon"], by_id[row["query_id"]]["lat"], by_id[row["query_id"]]["lon"]) >= 0.5)
        assert row["negative_ids"] == [i for _, i in allowed[::-1][:4]]  # the top four by text -> image score
        np.testing.assert_allclose(row["negative_scores"], [score for score, _ in allowed[::-1][:4]], atol=1e-5)

    rows = list(by_id.values())
    folder = tmp_path / "two_kinds"
    folder.mkdir()
    write_jsonl(folder / "0.jsonl", rows[:2])
    write_jsonl(folder / "1.jsonl", [{key: value for key, value in rows[2].items() if key != "view_image"} | {"view": "a text view"}])
    with pytest.raises(InputError, match=r"1\.jsonl: its second views are texts, but .*0\.jsonl's are images"):
        prepare_places(CorpusConfig(path=str(folder)))


def test_a_text_to_image_cross_view_corpus_needs_a_model_that_reads_its_image_views(tiny_model_path, captioned, tmp_path):
    """A text model reads the captions but not the tiles: the door refuses it for a mixed round, naming the views."""
    from hardneg.door import check_round
    from hardneg.errors import ConfigError

    corpus, _ = captioned
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"path": tiny_model_path}, "corpus": {"path": corpus},
                        "mine": {"miner": "mixed", "geo_negatives": 0, "num_negatives": 4, "min_km": 0.5}})
    with pytest.raises(ConfigError, match=r"the places' second views \(corpus.view_image_column\) holds images, but the model has no image"):
        check_round(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a Ray Train fit and Ray Data runs: about 140 s on a 2-core box
def test_a_text_to_image_cross_view_corpus_trains_a_dual_model_and_re_mines_with_its_checkpoint(ray_session, clip_path, captioned, tmp_path):
    """GPS batches, one training step of the dual model (captions through its text tower, tiles through its vision
    tower), then a DSS round mined with the checkpoint; the held-out places are evaluated caption -> tile."""
    from hardneg.pipelines.loop import row_views, train_loop
    from hardneg.pipelines.remine import remine, run_state

    corpus, by_id = captioned
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"), "model": {"path": clip_path}, "corpus": {"path": corpus},
        "mine": {"miner": "geographic", "num_negatives": 6, "min_km": 0.5, "max_km": 50, "batches": True, "composed_batch_size": 8},
        "embed": {"batch_size": 16},
        "train": {"epochs": 2, "remine_every": 1, "gps_epochs": 1, "batch_size": 8, "max_steps_per_epoch": 1,
                  "symmetric": True, "learning_rate": 1e-2, "negatives_per_row": 0},
    })
    [block] = train_loop(cfg, max_blocks=1)
    gps = run_state(cfg.run_dir).rounds[0].manifest
    assert row_views(cfg, gps) == ("text", "image") and block.metrics["steps"] == 1
    assert gps["figures"]["eval"]["views"] == "text -> image" and gps["figures"]["eval"]["queries"] == gps["heldout"]["places"]
    status, dss = remine(cfg)
    assert status == "done" and dss["miner"] == "mixed" and dss["encoder"] == block.id
    checkpoint = Encoder.load(block.path)
    base = Encoder.load(clip_path)
    here = round_dir(cfg.run_dir, 1)
    ids, texts = read_embeddings(here.join("embeddings").url)
    np.testing.assert_allclose(texts, checkpoint.encode([by_id[i]["text"] for i in ids]), atol=1e-5)  # the trained text tower
    assert np.abs(texts - base.encode([by_id[i]["text"] for i in ids])).max() > 1e-4
    view_ids, views = read_embeddings(here.join("view_embeddings").url)
    np.testing.assert_allclose(views, checkpoint.encode_images([by_id[i]["view_image"] for i in view_ids]), atol=1e-5)
    assert np.abs(views - base.encode_images([by_id[i]["view_image"] for i in view_ids])).max() > 1e-4  # ... and vision tower
    mined = storage.read_table(here.join("mined").url).to_pylist()
    assert len(mined) == len(by_id) - gps["heldout"]["places"]
    assert all(row["positive"] == by_id[row["query_id"]]["view_image"] for row in mined)


def test_pairs_of_texts_and_images_mine_either_way_with_a_dual_model_and_mixed_kinds_are_refused(ray_session, clip_path, places, tmp_path):
    """Pairs input with images (``queries.anchor_image_column`` / ``queries.positive_image_column``): captions
    whose positives are images (paths) make a corpus of images, each image one item as a text is; images (bytes)
    whose positives are captions ask with images. Either way the negatives are what the other tower ranks highest."""
    from hardneg.door import check_round
    from hardneg.pipelines.inputs import text_id
    from hardneg.pipelines.run import run_round

    _, rows = places
    tiles = rows[:16]
    captions = [f"photograph {row['id'][0]}, tile {row['id'][2:]}" for row in tiles]
    encoder = Encoder.load(clip_path)
    images, texts = encoder.encode_images([row["image"] for row in tiles]), encoder.encode(captions)

    def mine(run: str, pairs: str) -> list[dict]:
        """The door, then the round in process: its mined rows."""
        cfg = parse_config({"run_dir": str(tmp_path / run), "model": {"path": clip_path}, "queries": {"path": pairs},
                            "mine": {"num_negatives": 3}})
        check_round(cfg)
        with in_process(cfg):
            return storage.read_table(run_round(cfg)["outputs"]["mined"]).to_pylist()

    pairs = write_jsonl(tmp_path / "text_image.jsonl", [{"anchor": c, "positive_image": row["image"]} for c, row in zip(captions, tiles)])
    mined = mine("t2i", pairs)
    assert len(mined) == 16 and storage.read_manifest(round_dir(str(tmp_path / "t2i"), 0).join("embeddings"))["modality"] == "image"
    for row, text in zip(sorted(mined, key=lambda r: captions.index(r["query"])), texts):
        i = captions.index(row["query"])
        assert row["positive"] == tiles[i]["image"] and row["positive_id"] == text_id(tiles[i]["image"])
        ranked = [j for j in np.argsort(-(images @ text), kind="stable") if j != i]
        assert row["negatives"] == [tiles[j]["image"] for j in ranked[:3]]

    png = [open(row["image"], "rb").read() for row in tiles]
    parquet = str(tmp_path / "image_text.parquet")
    pq.write_table(pa.table({"anchor_image": png, "positive": captions}), parquet)
    mined = mine("i2t", parquet)
    assert len(mined) == 16
    for row in mined:
        i = png.index(row["query"])  # the query is the image's own bytes
        ranked = [j for j in np.argsort(-(texts @ images[i]), kind="stable") if j != i]
        assert row["positive"] == captions[i] and row["negatives"] == [captions[j] for j in ranked[:3]]

    folder = tmp_path / "two_kinds"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"anchor": "a", "positive_image": tiles[0]["image"]}])
    write_jsonl(folder / "b.jsonl", [{"anchor": "b", "positive": "a caption"}])
    with pytest.raises(InputError, match=r"a\.jsonl gives the positives as paths and .*b\.jsonl as texts"):
        check_round(parse_config({"run_dir": str(tmp_path / "mixed"), "model": {"path": clip_path}, "queries": {"path": str(folder)}}))
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": "x", "text": "more text"}])
    with pytest.raises(InputError, match=r"extra corpus holds texts, but the pairs' positives are images"):
        check_round(parse_config({"run_dir": str(tmp_path / "extra"), "model": {"path": clip_path}, "queries": {"path": pairs},
                                  "corpus": {"path": extra}}))
    assert not (tmp_path / "mixed").exists() and not (tmp_path / "extra").exists()
