"""The door's peak RSS at growing corpus sizes, with the default allocators and with Arrow's system pool plus
one glibc arena: how much of the door's growth is allocator memory (docs/scaling.md, "Measured driver memory").

Reads the data ``bench/scale.py`` built (``--work``: its folder, ``data-SIZE-QUERIES/paths.json``; run
scale.py with the same ``--work`` first). Each (size, allocator) runs ``door.check_round`` alone in its own
process; peak RSS is that process's ``getrusage`` maximum.

    .venv/bin/python bench/door_memory.py --work /tmp/scale --sizes 100000,3000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def door_alone(paths: dict, system_allocators: bool) -> dict:
    """Peak RSS (MB) of ``door.check_round`` on the scale bench's round config, in this process."""
    import ctypes
    import resource

    import pyarrow as pa

    if system_allocators:
        pa.set_memory_pool(pa.system_memory_pool())
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX = 1
    from hardneg import door
    from hardneg.config import parse_config

    cfg = parse_config({"run_dir": tempfile.mkdtemp(prefix="hardneg-door-"), "corpus": {"path": paths["corpus"]},
                        "queries": {"path": paths["queries"], "format": "queries"},
                        "embed": {"corpus_embeddings": paths["corpus_embeddings"], "query_embeddings": paths["query_embeddings"]}})
    door.check_round(cfg)
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="bench/scale.py's --work folder")
    parser.add_argument("--sizes", default="100000,3000000")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--system", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paths:
        print(json.dumps(door_alone(json.loads(args.paths), args.system)))
        return
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    print("| allocators | corpus rows | door peak RSS MB |\n|---|---|---|")
    for system in (False, True):
        for size in [int(s) for s in args.sizes.split(",")]:
            paths = json.load(open(os.path.join(args.work, f"data-{size}-{args.queries}", "paths.json")))
            out = subprocess.run([sys.executable, __file__, "--work", args.work, "--paths", json.dumps(paths)]
                                 + (["--system"] if system else []), env=env, capture_output=True, text=True, check=True)
            peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
            name = "Arrow system pool, one glibc arena" if system else "default (mimalloc, glibc arenas)"
            print(f"| {name} | {size:,} | {peak:,.0f} |")


if __name__ == "__main__":
    main()
