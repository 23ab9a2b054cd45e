"""Shared fixtures: one Ray instance per session, a moto S3 server on loopback, tiny models."""

import os

# Fake credentials for moto, set before Ray starts so its workers inherit them. No real AWS is reachable.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HARDNEG_FAULT_GATE", "1")  # fault points report to a test's gate (hardneg/faults.py)
# Ray workers run at nice 0, not Ray's 15, in every cluster a test starts (init_ray does this for local
# runs; the multi-node Cluster tests inherit it from here): at 15 a busy machine starves them.
os.environ.setdefault("RAY_worker_niceness", "0")

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


SLOW_TIMEOUT = 1200  # seconds; the default run's tests get pyproject's 600


def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:
        if "slow" in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs) for the whole test session."""
    import ray

    from hardneg.ray_runtime import init_ray

    init_ray(num_cpus=2, extra_pythonpath=[TESTS_DIR])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint (moto's server) on 127.0.0.1; yields its URL, with bucket ``hardneg-test``."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="hardneg-test")
    yield url
    server.stop()


@pytest.fixture
def s3_storage(s3_server):
    """Point hardneg's storage layer at the moto server for one test."""
    from hardneg import storage

    storage.configure(endpoint_url=s3_server)
    yield s3_server
    storage.configure()


@pytest.fixture(scope="session")
def packaged_model_path():
    from hardneg.encoder import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, packaged_model_path):
    """A tiny random BERT (2 layers, hidden 32) with MiniLM's tokenizer, saved like a sentence-transformers dir."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hardneg.encoder import Encoder

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_path, local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    path = str(tmp_path_factory.mktemp("tiny_model"))
    Encoder(BertModel(config).eval(), tokenizer, "mean", True, 64).save(path)
    return path


@pytest.fixture(scope="session")
def real_pairs():
    """Real (anchor, positive) pairs: docstrings of installed packages (see bench/corpora.py)."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(TESTS_DIR), "bench"))
    from corpora import docstring_pairs

    return docstring_pairs(("email", "http", "asyncio", "logging", "unittest", "json", "xml", "urllib", "importlib", "numpy"))


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory, packaged_model_path):
    """A tiny random BERT with one relevance logit, saved as a transformers sequence-classification dir."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_path, local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    path = str(tmp_path_factory.mktemp("tiny_cross_encoder"))
    BertForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def in_process(cfg):
    """A context in which ``run_round(cfg)`` runs every stage in this process (``ray.in_process: always``), as on a
    laptop: for tests whose point is what a round writes, not how Ray runs it (each Ray round starts actor processes
    that import torch, a few seconds each). ``test_in_process`` checks both roads give the same rows."""
    from hardneg.ray_runtime import round_executor

    return round_executor(cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"in_process": "always"})}), [])


def write_jsonl(path, rows):
    import json

    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return str(path)



def crossview_cities(limit: int) -> list[dict]:
    """Cities with a name in another script (bench/corpora.py): Sample4Geo's cross-view pairs, in text."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(TESTS_DIR), "bench"))
    from corpora import crossview_cities as cities

    return cities()[:limit]
