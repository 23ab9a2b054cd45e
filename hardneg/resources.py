"""What a run will use of the cluster: Encoder actors, tokenizer CPUs, search shards, object store.

The config leaves cluster-sized values unset (``embed.num_actors``,
``embed.gpus_per_actor``, ...); ``plan_resources`` fills them in from the
cluster's resources, so one config runs on a laptop and on a GPU cluster.
``describe`` is the text ``hardneg`` logs at start.

Example::

    plan = plan_resources(load_config(), {"CPU": 16, "GPU": 4})
    plan.num_actors, plan.gpus_per_actor  # (4, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hardneg.config import RunConfig


@dataclass(frozen=True)
class ResourcePlan:
    """Resolved resources of a run; ``*_source`` says whether a value was configured or derived."""

    cluster_cpus: float
    cluster_gpus: float
    num_actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    torch_threads: int
    tokenize_cpus: float
    num_shards: int
    shard_cpus: float
    shard_gpus: float
    object_store_memory: Optional[int]
    actors_source: str


def cluster_resources() -> dict:
    """The running Ray cluster's total resources (``ray.cluster_resources()``)."""
    import ray

    return dict(ray.cluster_resources())


def plan_resources(cfg: RunConfig, cluster: Optional[dict] = None) -> ResourcePlan:
    """Fill unset resource values from ``cluster`` (default: the running Ray cluster's resources).

    Encoder actors: ``embed.num_actors``, else one per ``gpus_per_actor`` GPUs when the cluster
    has GPUs, else one CPU actor whose torch uses every CPU of the cluster (the tokenizer tasks
    share them). Search shards stay as configured (``index.num_shards``).

    Example::

        plan_resources(cfg, {"CPU": 16, "GPU": 4}).num_actors  # 4 (one per GPU)
        plan_resources(cfg, {"CPU": 8}).torch_threads  # 8
    """
    cluster = cluster_resources() if cluster is None else cluster
    embed = cfg.embed
    gpus, cpus = float(cluster.get("GPU", 0)), max(1.0, float(cluster.get("CPU", 1)))
    gpus_per_actor = embed.gpus_per_actor if embed.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if embed.num_actors:
        num_actors, source = embed.num_actors, "configured"
    elif gpus_per_actor > 0:
        num_actors, source = max(1, int(gpus // gpus_per_actor)), "one per GPU" if gpus_per_actor == 1 else f"{gpus:g} GPUs / {gpus_per_actor:g}"
    else:
        num_actors, source = 1, "no GPU: one CPU actor"
    cpus_per_actor = float(embed.cpus_per_actor or 1.0)
    # A CPU actor runs torch on cores it shares with the tokenizer tasks; Ray would pin it to
    # num_cpus threads (OMP_NUM_THREADS), which on a small machine halves throughput.
    threads = max(1, round(embed.cpus_per_actor)) if embed.cpus_per_actor else max(1, int(cpus) // num_actors)
    tokenize_cpus = max(1.0, cpus - num_actors * cpus_per_actor)
    store = cfg.ray.object_store_memory or cluster.get("object_store_memory")
    shard_cpus, shard_gpus = shard_resources(cfg.index.num_shards, cluster, cfg.index.device)
    return ResourcePlan(
        cluster_cpus=cpus, cluster_gpus=gpus, num_actors=num_actors, gpus_per_actor=float(gpus_per_actor),
        cpus_per_actor=cpus_per_actor, torch_threads=threads, tokenize_cpus=tokenize_cpus,
        num_shards=cfg.index.num_shards, shard_cpus=shard_cpus, shard_gpus=shard_gpus, object_store_memory=int(store) if store else None, actors_source=source,
    )


def shard_resources(num_shards: int, cluster: dict, device: str = "auto") -> tuple[float, float]:
    """``(CPUs, GPUs)`` per search-shard actor: one CPU (and one GPU with a GPU index) each, shared
    out when there are more shards than the cluster has, so every shard can be placed.

    Example::

        shard_resources(3, {"CPU": 2})  # (0.6666666666666666, 0.0)
    """
    cpus, gpus = max(1.0, float(cluster.get("CPU", 1))), float(cluster.get("GPU", 0))
    shard_gpus = min(1.0, gpus / num_shards) if gpus and device != "cpu" else 0.0
    return min(1.0, cpus / num_shards), shard_gpus


def describe(plan: ResourcePlan) -> str:
    """One line per resource, for the log at start.

    Example::

        print(describe(plan_resources(cfg, {"CPU": 16, "GPU": 4})))
        # cluster: 16 CPU, 4 GPU
        # encoder actors: 4 (one per GPU), 1 GPU + 1 CPU each, 1 torch thread(s)
        # ...
    """
    store = f"{plan.object_store_memory / 2**30:.1f} GiB" if plan.object_store_memory else "Ray's default"
    return "\n".join([
        f"cluster: {plan.cluster_cpus:g} CPU, {plan.cluster_gpus:g} GPU",
        f"encoder actors: {plan.num_actors} ({plan.actors_source}), {plan.gpus_per_actor:g} GPU + "
        f"{plan.cpus_per_actor:g} CPU each, {plan.torch_threads} torch thread(s)",
        f"tokenizer CPUs: {plan.tokenize_cpus:g} (CPUs the actors leave free; tasks take 1 each)",
        f"search shards: {plan.num_shards} (index.num_shards), {plan.shard_gpus:g} GPU + {plan.shard_cpus:g} CPU each",
        f"object store: {store}",
    ])
