"""Run ``embed_corpus`` on a 3-node local Ray cluster (``ray.cluster_utils.Cluster``), in its own process.

    python tests/multinode_embed.py CORPUS MODEL OUTPUT REPORT.json [--kill-node]

Every node has 1 CPU, so two Encoder actors (1 CPU each) cannot share a node. With
``--kill-node`` a fourth node is added, and the node of an Encoder actor on a worker node is removed
while that actor holds its first embedded block (``hardneg.faults`` point ``embed.block``). REPORT.json gets the manifest and the actors' node ids.
"""

import json
import sys

from faults import KillAtPoint, encoder_actors, fault_gate


def main(corpus, model, output, report, kill_node=False):
    import ray
    from ray.cluster_utils import Cluster

    from hardneg.config import parse_config
    from hardneg.pipelines.embed import embed_corpus
    from hardneg.ray_runtime import init_ray

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(3 if kill_node else 2)]
    cluster.wait_for_nodes()
    try:
        init_ray(address=cluster.address)
        cfg = parse_config({"corpus": {"path": corpus}, "model": {"path": model}, "embed": {"num_actors": 2, "block_size": 25}})
        killer = None
        with fault_gate() as gate:
            if kill_node:
                by_id = {node.node_id: node for node in workers}
                # An actor on the head cannot be taken down with its node; wait for one on a worker.
                killer = KillAtPoint(
                    gate, "embed.block",
                    kill=lambda info: cluster.remove_node(by_id[info["node_id"]], allow_graceful=False),
                    choose=lambda info: info["node_id"] in by_id,
                )
                killer.start()
            manifest = embed_corpus(cfg, output)
            if killer:
                killer.join(timeout=5)
        actors = encoder_actors()
        with open(report, "w") as handle:
            json.dump({
                "manifest": manifest,
                "actor_nodes": sorted({a["node_id"] for a in actors}),
                "nodes": len([n for n in ray.nodes() if n["Alive"]]),
                "killed": killer.killed if killer else None,
                "error": repr(killer.error) if killer else None,
            }, handle)
    finally:
        ray.shutdown()
        cluster.shutdown()  # never left running, or a later ray.init() would join it


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(*args, kill_node="--kill-node" in sys.argv)
