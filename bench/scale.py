"""Scale: one mining round over precomputed vectors at growing corpus sizes; driver memory, stage times, recall.

Per size the corpus is real text (docstring bodies of installed packages, bench/corpora.py, repeated
to size, each copy suffixed ``[copy k]`` so no two rows share a text) with random unit vectors at
MiniLM's 384 dimensions; ``--queries`` queries are docstring summaries, each with one positive whose
vector is the query's plus noise (cosine about 0.8). Vectors go in through the bring-your-own-embeddings
path (``embed.corpus_embeddings`` / ``embed.query_embeddings``), so no model runs and the box's CPU
goes to Ray, the index and the miner.

Each size runs in its own process: the door check, a local Ray, then ``run_round``. Reported: the
driver process's own peak RSS (``getrusage``), the whole process tree's (Ray's raylet, GCS and
workers too; bench/measure.py), wall time per stage (the round manifest's, plus the door and Ray
start-up), and recall@range_max against exact search on ``index.recall_sample`` queries (the round's
own check; 1.0 by construction for the exact backend).

    .venv/bin/python bench/scale.py --sizes 100000,1000000 --queries 10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DIM = 384
FILE_ROWS = 100_000
SETTINGS = {"num_negatives": 5, "range_max": 50}


def unit(vectors):
    import numpy as np

    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def real_texts(work: str) -> tuple[list[str], list[str]]:
    """(docstring bodies, docstring summaries) of installed packages, parsed once and kept in ``work/texts.json``."""
    cache = os.path.join(work, "texts.json")
    if not os.path.exists(cache):
        from corpora import docstring_pairs

        pairs = docstring_pairs()
        with open(cache, "w") as handle:
            json.dump({"bodies": [p["positive"] for p in pairs], "anchors": [p["anchor"] for p in pairs]}, handle)
    with open(cache) as handle:
        texts = json.load(handle)
    return texts["bodies"], texts["anchors"]


def build(size: int, num_queries: int, work: str) -> dict:
    """Write corpus, queries and both embedding folders for ``size`` rows under ``work``, a file at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from hardneg.pipelines.embed import embedding_array

    bodies, anchors = real_texts(os.path.dirname(work))
    rng = np.random.default_rng(0)
    positives = np.sort(rng.choice(size, size=num_queries, replace=False))
    query_vectors = np.zeros((num_queries, DIM), np.float32)
    paths = {name: os.path.join(work, name) for name in ("corpus", "corpus_embeddings", "queries", "query_embeddings")}
    for path in paths.values():
        os.makedirs(path, exist_ok=True)
    for number, lo in enumerate(range(0, size, FILE_ROWS)):
        hi = min(lo + FILE_ROWS, size)
        rows = np.arange(lo, hi)
        ids = [f"d{i}" for i in rows]
        texts = [f"{bodies[i % len(bodies)]} [copy {i // len(bodies)}]" for i in rows]
        vectors = unit(np.random.default_rng(1 + number).standard_normal((hi - lo, DIM), np.float32))
        inside = np.flatnonzero((positives >= lo) & (positives < hi))
        noise = np.random.default_rng(10_000 + number).standard_normal((len(inside), DIM), np.float32) * 0.04
        query_vectors[inside] = unit(vectors[positives[inside] - lo] + noise)
        pq.write_table(pa.table({"id": ids, "text": texts}), os.path.join(paths["corpus"], f"part-{number:05d}.parquet"))
        pq.write_table(pa.table({"id": ids, "embedding": embedding_array(vectors, "float32")}),
                       os.path.join(paths["corpus_embeddings"], f"part-{number:05d}.parquet"))
    query_ids = [f"q{j}" for j in range(num_queries)]
    pq.write_table(pa.table({
        "query_id": query_ids, "query": [anchors[j % len(anchors)] + f" [copy {j // len(anchors)}]" for j in range(num_queries)],
        "positive_ids": [[f"d{i}"] for i in positives],
    }), os.path.join(paths["queries"], "part-00000.parquet"))
    pq.write_table(pa.table({"id": query_ids, "embedding": embedding_array(query_vectors, "float32")}),
                   os.path.join(paths["query_embeddings"], "part-00000.parquet"))
    return paths


def arm_st(paths: dict, size: int) -> dict:
    """sentence-transformers' ``mine_hard_negatives`` over the same texts and vectors, its encoder bypassed through
    its own embedding cache (``cache_folder``: the .npy files it would have saved, named by its hash)."""
    import hashlib

    import numpy as np
    import pyarrow.parquet as pq
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from hardneg.encoder import default_model_path
    from hardneg.search import read_embeddings

    texts = pq.read_table(paths["corpus"], columns=["text"]).column("text").to_pylist()
    queries = pq.read_table(paths["queries"]).to_pylist()
    anchors = [q["query"] for q in queries]
    positives = [texts[int(q["positive_ids"][0][1:])] for q in queries]
    corpus_vectors = np.concatenate([read_embeddings("", [(os.path.join(paths["corpus_embeddings"], name), 0)])[1]
                                     for name in sorted(os.listdir(paths["corpus_embeddings"]))])
    _, query_vectors = read_embeddings("", [(os.path.join(paths["query_embeddings"], "part-00000.parquet"), 0)])
    model = SentenceTransformer(default_model_path(), device="cpu")
    cache = tempfile.mkdtemp(prefix="st-cache-")
    name = model.model_card_data.base_model or ""
    for kind, items, vectors in (("query", anchors, query_vectors), ("corpus", texts, corpus_vectors)):
        digest = hashlib.sha256(repr((name, None, None, items)).encode(), usedforsecurity=False).hexdigest()
        np.save(os.path.join(cache, f"{kind}_embeddings_{digest}.npy"), vectors)
    del corpus_vectors, query_vectors
    started = time.perf_counter()
    mined = mine_hard_negatives(Dataset.from_dict({"anchor": anchors, "positive": positives}), model, corpus=texts,
                                cache_folder=cache, output_format="n-tuple", use_faiss=size > 200_000, verbose=False, **SETTINGS)
    return {"size": size, "arm": "ST mine_hard_negatives", "backend": "faiss flat" if size > 200_000 else "torch exact",
            "round_s": time.perf_counter() - started, "rows": len(mined), "recall": 1.0,
            "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def index_settings(size: int) -> dict:
    if size <= 200_000:
        return {"backend": "exact", "device": "cpu"}
    # Past 1M rows, two shards: one IVF build over 3M x 384 float32 rows peaks above this 24 GB box
    # (vectors, index, serialized bytes), and each shard's build and CorpusShard then hold half.
    return {"backend": "ivf", "device": "cpu", "nlist": 1024, "nprobe": 32, "num_shards": 1 if size <= 1_000_000 else 2}


def arm(paths: dict, size: int, run_dir: str) -> dict:
    """The round, in this process (the driver); prints its figures as one JSON line."""
    from hardneg import door
    from hardneg.config import parse_config

    cfg = parse_config({
        "run_dir": run_dir,
        "corpus": {"path": paths["corpus"]},
        "queries": {"path": paths["queries"], "format": "queries"},
        "embed": {"corpus_embeddings": paths["corpus_embeddings"], "query_embeddings": paths["query_embeddings"]},
        "index": index_settings(size),
        "mine": SETTINGS,
    })
    started = time.perf_counter()
    door.check_round(cfg)
    door_s = time.perf_counter() - started
    from hardneg.pipelines.run import run_round
    from hardneg.ray_runtime import init_ray

    started = time.perf_counter()
    init_ray()
    ray_s = time.perf_counter() - started
    started = time.perf_counter()
    manifest = run_round(cfg)
    round_s = time.perf_counter() - started
    stages = {"door": door_s, "ray_start": ray_s, **{name: stage["seconds"] for name, stage in manifest["stages"].items()}}
    recall = manifest["figures"].get("recall")
    return {
        "size": size, "arm": "hardneg", "queries": manifest["counts"]["queries"], "rows": manifest["counts"]["rows"],
        "backend": index_settings(size)["backend"], "round_s": round_s, "stages": stages,
        "recall": recall["recall"] if recall else 1.0, "recall_queries": recall["queries"] if recall else None,
        "negatives_per_query": manifest["figures"]["negatives_per_query"],
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="corpus rows, comma-separated")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--work", help="where the data and run dirs go (default: a new temporary folder); data built there is reused")
    parser.add_argument("--arms", default="hardneg,st", help="hardneg, st (mine_hard_negatives), or both")
    parser.add_argument("--arm", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--st", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        paths = json.loads(args.paths)
        print(json.dumps(arm_st(paths, args.arm) if args.st else arm(paths, args.arm, args.run_dir)))
        return

    from measure import markdown_table, run_arm

    work = args.work or tempfile.mkdtemp(prefix="hardneg-scale-")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HARDNEG_PROGRESS="0")
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        data = os.path.join(work, f"data-{size}-{args.queries}")
        started = time.perf_counter()
        paths = json.load(open(os.path.join(data, "paths.json"))) if os.path.exists(os.path.join(data, "paths.json")) else None
        if paths is None:
            paths = build(size, args.queries, data)
            json.dump(paths, open(os.path.join(data, "paths.json"), "w"))
        print(f"data for {size:,} rows ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        for name in args.arms.split(","):
            argv = [sys.executable, __file__, "--arm", str(size), "--paths", json.dumps(paths),
                    "--run-dir", tempfile.mkdtemp(prefix=f"run-{size}-", dir=work)] + (["--st"] if name == "st" else [])
            result = run_arm(argv, env=env)
            result.update(result.pop("stages", {}))
            rows.append(result)
            print(json.dumps(result), file=sys.stderr)
    print(f"\nprecomputed 384-dim unit vectors, {args.queries:,} queries, {SETTINGS}; CPU. ST: 'round s' is its "
          "mine_hard_negatives call (vectors from its cache); its process is the driver and the whole tree\n")
    stage_names = [name for name in ("door", "ray_start", "inputs", "embed", "index", "mine", "recall_check")
                   if any(name in row for row in rows)]
    print(markdown_table(rows, [
        ("arm", "arm", ""), ("size", "corpus rows", ",d"), ("backend", "index", ""), ("driver_peak_rss_mb", "driver peak RSS MB", ",.0f"),
        ("peak_rss_mb", "process tree peak RSS MB", ",.0f"), ("wall_s", "wall s", ".1f"),
        ("round_s", "round s", ".1f"), *[(name, f"{name} s", ".1f") for name in stage_names],
        ("recall", "recall@50", ".4f"), ("negatives_per_query", "negatives/query", ".2f"),
    ]))


if __name__ == "__main__":
    main()
