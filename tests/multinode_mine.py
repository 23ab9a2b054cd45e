"""Run a round's mine stage on a 3-node local Ray cluster (``ray.cluster_utils.Cluster``), in its own process.

    python tests/multinode_mine.py CONFIG.json REPORT.json

CONFIG.json is a run config (``parse_config``) with ``index.num_shards`` > 1: a similarity round with the
user's own embeddings (no model, so both runs mine the same vectors), or a geographic round. Every node
has 1 CPU. REPORT.json gets the round's manifest, the nodes, and the nodes of the shard actors
(``CorpusShard`` or ``PlaceShard``) and of the ``MineActor``s.
"""

import json
import sys

from faults import actors_of


def main(config, report):
    import ray
    from ray.cluster_utils import Cluster

    from hardneg.config import parse_config
    from hardneg.pipelines.run import run_round
    from hardneg.ray_runtime import init_ray

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        init_ray(address=cluster.address)
        with open(config) as handle:
            manifest = run_round(parse_config(json.load(handle)))
        with open(report, "w") as handle:
            json.dump({
                "manifest": manifest,
                "worker_nodes": [node.node_id for node in workers],
                "nodes": len([n for n in ray.nodes() if n["Alive"]]),
                "shard_nodes": sorted(a["node_id"] for a in actors_of("CorpusShard") + actors_of("PlaceShard")),
                "mine_nodes": sorted(a["node_id"] for a in actors_of("MineActor")),
            }, handle)
    finally:
        ray.shutdown()
        cluster.shutdown()  # never left running, or a later ray.init() would join it


if __name__ == "__main__":
    main(*sys.argv[1:3])
