"""Resource planning: unset config values are filled from the cluster's resources."""

from hardneg.config import parse_config
from hardneg.resources import describe, plan_resources


def test_one_gpu_actor_per_gpu():
    plan = plan_resources(parse_config({}), {"CPU": 16, "GPU": 4, "object_store_memory": 8 * 2**30})
    assert (plan.num_actors, plan.gpus_per_actor, plan.cpus_per_actor) == (4, 1.0, 1.0)
    assert plan.tokenize_cpus == 12 and plan.object_store_memory == 8 * 2**30 and plan.num_shards == 1


def test_half_a_gpu_per_actor_doubles_the_actors():
    plan = plan_resources(parse_config({"embed": {"gpus_per_actor": 0.5}}), {"CPU": 16, "GPU": 4})
    assert (plan.num_actors, plan.gpus_per_actor) == (8, 0.5)


def test_cpu_cluster_runs_one_actor_with_every_core_for_torch():
    plan = plan_resources(parse_config({}), {"CPU": 8})
    assert (plan.num_actors, plan.gpus_per_actor, plan.torch_threads) == (1, 0.0, 8)
    assert plan.object_store_memory is None


def test_configured_values_win_over_the_cluster():
    cfg = parse_config({
        "embed": {"num_actors": 2, "cpus_per_actor": 3},
        "index": {"num_shards": 4},
        "ray": {"object_store_memory": 2 * 2**30},
    })
    plan = plan_resources(cfg, {"CPU": 16, "GPU": 4, "object_store_memory": 8 * 2**30})
    assert (plan.num_actors, plan.cpus_per_actor, plan.torch_threads) == (2, 3.0, 3)
    assert plan.tokenize_cpus == 10 and plan.num_shards == 4 and plan.object_store_memory == 2 * 2**30
    assert plan.actors_source == "configured"


def test_describe_has_one_line_per_item():
    text = describe(plan_resources(parse_config({"index": {"num_shards": 2}}), {"CPU": 16, "GPU": 4, "object_store_memory": 2**31}))
    assert text.splitlines() == [
        "cluster: 16 CPU, 4 GPU",
        "encoder actors: 4 (one per GPU), 1 GPU + 1 CPU each, 4 torch thread(s)",
        "tokenizer CPUs: 12 (CPUs the actors leave free; tasks take 1 each)",
        "search shards: 2 (index.num_shards), 1 GPU + 1 CPU each",
        "object store: 2.0 GiB",
    ]


def test_plan_reads_the_running_cluster(ray_session):
    plan = plan_resources(parse_config({}))
    assert plan.cluster_cpus == 2 and plan.num_actors == 1 and plan.torch_threads == 2


def test_search_shards_share_cpus_and_gpus_when_there_are_more_shards_than_devices():
    from hardneg.resources import shard_resources

    assert shard_resources(3, {"CPU": 2}) == (2 / 3, 0.0)
    assert shard_resources(2, {"CPU": 16, "GPU": 4}) == (1.0, 1.0)
    assert shard_resources(8, {"CPU": 16, "GPU": 4}) == (1.0, 0.5)
    assert shard_resources(2, {"CPU": 16, "GPU": 4}, device="cpu") == (1.0, 0.0)
