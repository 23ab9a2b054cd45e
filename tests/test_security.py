"""Requests go only where the user pointed them, and a checkpoint file cannot run code when loaded."""

import os
import socket

import pytest
import torch
from conftest import write_jsonl

from hardneg import storage
from hardneg.cli import main
from hardneg.errors import StorageError
from hardneg.trainers.train_loop import OPTIMIZER_FILE, load_training_state


@pytest.fixture(autouse=True)
def default_storage():
    yield
    storage.configure()


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def put_job(s3_server, key, text):
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").put_object(Bucket="hardneg-test", Key=key, Body=text.encode())
    return f"s3://hardneg-test/{key}"


# --- 1: storage settings apply before the config is read -------------------------------------------


def test_endpoint_flag_applies_before_the_config_is_read(s3_server, tmp_path, capsys):
    job = put_job(s3_server, "endpoint-flag/job.yaml",
                  f"run_dir: {tmp_path / 'run'}\nqueries:\n  path: s3://hardneg-test/endpoint-flag/missing.jsonl\n")
    assert main(["run", job, "--endpoint-url", s3_server]) == 2
    # the config came from the moto endpoint: its (missing) queries path is what the door reports
    assert "s3://hardneg-test/endpoint-flag/missing.jsonl: no such file or folder" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


def test_aws_endpoint_url_s3_variable_applies_before_the_config_is_read(s3_server, tmp_path, capsys, monkeypatch):
    job = put_job(s3_server, "endpoint-env/job.yaml",
                  f"run_dir: {tmp_path / 'run'}\nqueries:\n  path: s3://hardneg-test/endpoint-env/missing.jsonl\n")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    assert main(["run", job]) == 2
    assert "s3://hardneg-test/endpoint-env/missing.jsonl: no such file or folder" in capsys.readouterr().err
    assert storage.endpoint() == s3_server  # and Ray workers are handed the same endpoint
    assert storage.s3_options()["client_kwargs"]["endpoint_url"] == s3_server


# --- 9: an endpoint that does not answer -----------------------------------------------------------


@pytest.mark.parametrize("command", [["run", "s3://hardneg-test/job.yaml"], ["remine", "s3://hardneg-test/runs/a"],
                                     ["mine", "pairs.jsonl", "s3://hardneg-test/runs/a"]])
def test_unreachable_endpoint_is_one_line_naming_url_and_endpoint(closed_port, command, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sEcReT-never-printed")
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": "a", "positive": "b"}])
    endpoint = f"http://127.0.0.1:{closed_port}"
    assert main([*command, "--endpoint-url", endpoint]) == 1
    err = capsys.readouterr().err
    s3_path = next(arg for arg in command if arg.startswith("s3://"))
    assert f"cannot reach S3 for {s3_path}: endpoint {endpoint} does not answer" in err
    assert "Check --endpoint-url" in err
    assert "Traceback" not in err and "sEcReT" not in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "runs")


def test_reachability_check_passes_a_live_endpoint_and_local_paths(s3_storage):
    storage.check_reachable("s3://hardneg-test/anything/at/all")
    storage.check_reachable("/no/such/local/path")
    storage.check_reachable("s3://no-such-bucket/x")  # the endpoint answered: the real request says what is wrong


# --- 2: optimizer state loads with weights_only=True -----------------------------------------------


class WritesAFile:
    """What a malicious checkpoint could hold: unpickling it would create ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_payload_in_the_optimizer_state_is_refused(tmp_path):
    owned = tmp_path / "owned"
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    torch.save({"optimizer": WritesAFile(str(owned)), "logit_scale": {}}, checkpoint / OPTIMIZER_FILE)
    with pytest.raises(StorageError) as err:
        load_training_state(str(checkpoint))
    assert f"{checkpoint / OPTIMIZER_FILE}: refused to load" in str(err.value)
    assert "Unsupported global" in str(err.value)
    assert not owned.exists()


def test_a_real_optimizer_state_loads(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    torch.save({"optimizer": optimizer.state_dict(), "logit_scale": {"log_scale": torch.tensor(2.0)}}, tmp_path / OPTIMIZER_FILE)
    saved = load_training_state(str(tmp_path))
    fresh = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(saved["optimizer"])
    assert float(saved["logit_scale"]["log_scale"]) == 2.0 and fresh.state_dict()["state"][0]["step"] == 1
