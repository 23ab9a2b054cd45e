"""Scaling: embed and mine throughput with 1, 2 and 4 workers on a local multi-node Ray cluster.

Each setting starts its own ``ray.cluster_utils.Cluster`` (a head plus ``workers`` nodes of
``--cpus-per-node`` CPUs, all on this machine), then runs one round of ``hardneg run`` on the
same real pairs (bench/corpora.py docstrings) with ``embed.num_actors = workers`` Encoder actors
and ``index.num_shards = workers`` search-shard actors, spread over the nodes. On a 2-core machine
the workers share the same two cores, so the point is that Ray's overhead stays flat as the work is
split, not a speedup; on a real cluster each worker brings its own CPU or GPU.

    .venv/bin/python bench/scaling.py --pairs 2000 --workers 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def arm(pairs_path: str, workers: int, cpus_per_node: float) -> dict:
    from ray.cluster_utils import Cluster

    from hardneg.ray_runtime import init_ray

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(workers):
        cluster.add_node(num_cpus=cpus_per_node)
    cluster.wait_for_nodes()
    try:
        init_ray(address=cluster.address)
        return _round(pairs_path, workers)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def _round(pairs_path: str, workers: int) -> dict:
    from hardneg.config import parse_config
    from hardneg.pipelines.run import run_round

    cfg = parse_config({
        "run_dir": tempfile.mkdtemp(prefix="hardneg-scaling-"), "queries": {"path": pairs_path},
        "embed": {"num_actors": workers, "cpus_per_actor": 1, "block_size": 256},  # the other CPU tokenizes
        "index": {"backend": "exact", "device": "cpu", "num_shards": workers},
        "mine": {"num_negatives": 3, "range_max": 50, "relative_margin": 0.05},
    })
    manifest = run_round(cfg)
    stages = manifest["stages"]
    embed_rows = stages["embed"]["rows"]  # corpus and queries, embedded in one run
    embed_s = stages["embed"]["seconds"]
    mine_s = sum(stages[name]["seconds"] for name in ("index", "mine"))
    return {"workers": workers, "embed_rows": embed_rows, "embed_s": embed_s, "embed_per_s": embed_rows / embed_s,
            "queries": stages["mine"]["rows"], "mine_s": mine_s, "mine_per_s": stages["mine"]["rows"] / mine_s,
            "round_s": manifest["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--cpus-per-node", type=float, default=2.0)
    parser.add_argument("--arm", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pairs-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(arm(args.pairs_path, args.arm, args.cpus_per_node)))
        return

    from measure import markdown_table, run_arm
    from mine import build_pairs

    pairs_path = os.path.join(tempfile.mkdtemp(prefix="hardneg-scaling-"), "pairs.jsonl")
    n = build_pairs(args.pairs, pairs_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HARDNEG_PROGRESS="0")
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        argv = [sys.executable, __file__, "--arm", str(workers), "--pairs-path", pairs_path, "--cpus-per-node", str(args.cpus_per_node)]
        rows.append(run_arm(argv, env=env))
    print(f"\n{n:,} docstring pairs; one round per setting on a local ray.cluster_utils.Cluster "
          f"(head + N nodes of {args.cpus_per_node:g} CPU, one machine of {os.cpu_count()} cores)\n")
    print(markdown_table(rows, [
        ("workers", "workers (nodes, Encoder actors, search shards)", "d"), ("embed_rows", "texts embedded", ",d"),
        ("embed_per_s", "embed texts/s", ",.1f"), ("queries", "queries mined", ",d"), ("mine_s", "index+search+mine s", ".2f"),
        ("mine_per_s", "mine queries/s", ",.0f"), ("round_s", "round s", ".1f"), ("peak_rss_mb", "peak RSS MB", ",.0f"),
    ]))


if __name__ == "__main__":
    main()
