"""The cluster files ship valid: Ray's own schema for ray_cluster.yaml, KubeRay fields, the Dockerfile, the job config."""

import copy
import os
import re

import jsonschema
import pytest
import yaml

from hardneg.config import load_config
from hardneg.resources import plan_resources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_yaml(relative):
    with open(os.path.join(ROOT, relative)) as handle:
        return yaml.safe_load(handle)


def prepared(config):
    """What ``ray up`` validates: the config merged with the provider's defaults, then Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def test_ray_cluster_yaml_passes_rays_schema_with_a_gpu_worker_type():
    config = prepared(read_yaml("ray_cluster.yaml"))
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert [t["resources"] for t in workers] == [{"CPU": 4, "GPU": 1}]
    assert workers[0]["node_config"]["InstanceType"] == "g5.xlarge"
    assert workers[0]["min_workers"] <= workers[0]["max_workers"] <= config["max_workers"]


def test_ray_cluster_setup_installs_torch_before_hardneg():
    setup = read_yaml("ray_cluster.yaml")["setup_commands"]
    torch = [i for i, cmd in enumerate(setup) if re.search(r"pip install .*torch==2\.13\.0", cmd)]
    hardneg = [i for i, cmd in enumerate(setup) if re.search(r"pip install .*hardneg\[gpu\]", cmd)]
    assert torch and hardneg and torch[0] < hardneg[0]


def test_rays_schema_check_is_real():
    config = read_yaml("ray_cluster.yaml")
    config["available_node_types"]["worker.gpu"]["min_wrokers"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_wrokers"):
        prepared(config)


def test_rayjob_runs_hardneg_on_gpu_workers_with_irsa():
    docs = list(yaml.safe_load_all(open(os.path.join(ROOT, "infra/kuberay/rayjob.yaml"))))
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"] == "hardneg run s3://bucket/job.yaml"
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    [gpu] = cluster["workerGroupSpecs"]
    assert "rayStartParams" in gpu and gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    [container] = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    pods = [cluster["headGroupSpec"]["template"], gpu["template"], spec["submitterPodTemplate"]]
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
        for c in pod["spec"]["containers"]:
            assert c["image"] == "REGISTRY/hardneg:0.1.0"
            assert not any("AWS_" in str(e) for e in c.get("env", [])) and "envFrom" not in c


def test_dockerfile_installs_torch_before_hardneg():
    text = open(os.path.join(ROOT, "infra/Dockerfile")).read()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311-gpu$", text, re.M)
    torch = text.index("pip install --no-cache-dir torch==2.13.0")
    assert torch < text.index('hardneg[gpu]"')


def test_cluster_job_config_loads_and_plans_one_actor_per_gpu():
    cfg = load_config(os.path.join(ROOT, "examples/cluster_job.yaml"))
    assert cfg.corpus.path.startswith("s3://") and cfg.run_dir.startswith("s3://")
    assert (cfg.embed.gpus_per_actor, cfg.index.num_shards, cfg.ray.address) == (1, 8, "auto")
    plan = plan_resources(cfg, {"CPU": 40, "GPU": 8})
    assert (plan.num_actors, plan.gpus_per_actor, plan.num_shards) == (8, 1.0, 8)
