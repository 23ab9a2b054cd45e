"""Benchmark: the search backends on real embeddings: build time, queries/s, recall@k against exact search.

Embeddings: the docstring passages of installed packages (bench/corpora.py) embedded once by
`hardneg embed` with the packaged all-MiniLM-L6-v2 and kept in bench/out/ (re-used by later runs);
queries: the summary lines, embedded the same way. Each backend runs in this process, one after
another; ``numpy`` (``queries @ corpus.T`` + argpartition, the usual hand-written baseline) is
the peer. Memory is the index's own size (vectors and lists), not the process.

    .venv/bin/python bench/search.py --n 20000 --k 50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def embedded(n: int, kind: str) -> np.ndarray:
    """(n, 384) float32 embeddings of the first n docstring anchors or passages, cached in bench/out/."""
    out = os.path.join(HERE, "out", f"search-{kind}-{n}")
    if not os.path.exists(os.path.join(out, "emb", "MANIFEST.json")):
        from embed import build_corpus

        from hardneg.config import parse_config
        from hardneg.pipelines.embed import embed_corpus
        from hardneg.ray_runtime import init_ray

        os.makedirs(out, exist_ok=True)
        corpus = os.path.join(out, "corpus.jsonl")
        build_corpus(n, corpus, kind)
        init_ray()
        embed_corpus(parse_config({"corpus": {"path": corpus}}), os.path.join(out, "emb"))
    from hardneg.search import read_embeddings

    return read_embeddings(os.path.join(out, "emb"))[1]


def numpy_topk(queries: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    rows = []
    for lo in range(0, len(queries), 1024):
        scores = queries[lo:lo + 1024] @ corpus.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
        rows.append(np.take_along_axis(part, order, 1))
    return np.concatenate(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="corpus passages")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=50)
    args = parser.parse_args()

    from measure import markdown_table

    from hardneg.config import IndexConfig
    from hardneg.search import build_index, recall_at_k

    corpus = embedded(args.n, "positive")
    queries = embedded(args.queries, "anchor")
    rows = []
    started = time.perf_counter()
    truth = numpy_topk(queries, corpus, args.k)
    rows.append({"backend": "numpy matmul + argpartition (peer)", "build_s": 0.0, "search_s": time.perf_counter() - started,
                 "recall": 1.0, "index_mb": corpus.nbytes / 2**20})
    for name, cfg in [
        ("hardneg exact (torch, chunked)", IndexConfig(backend="exact", device="cpu")),
        ("hardneg flat (faiss IndexFlatIP)", IndexConfig(backend="flat", device="cpu")),
        ("hardneg ivf (nprobe 16)", IndexConfig(backend="ivf", device="cpu", nprobe=16)),
        ("hardneg ivfpq (m 48, nprobe 16)", IndexConfig(backend="ivfpq", device="cpu", pq_m=48, nprobe=16)),
        ("hardneg hnsw (M 32, ef 128)", IndexConfig(backend="hnsw", device="cpu")),
    ]:
        t0 = time.perf_counter()
        index = build_index(corpus, cfg)
        t1 = time.perf_counter()
        _, found = index.search(queries, args.k)
        t2 = time.perf_counter()
        size = len(index.to_bytes()) / 2**20
        rows.append({"backend": name, "build_s": t1 - t0, "search_s": t2 - t1, "recall": recall_at_k(found, truth), "index_mb": size})
    for row in rows:
        row["qps"] = len(queries) / row["search_s"]
    print(f"\ncorpus {len(corpus):,} passages x {corpus.shape[1]} dims (MiniLM), {len(queries):,} queries, k={args.k}, CPU\n")
    print(markdown_table(rows, [
        ("backend", "backend", ""), ("build_s", "build s", ".2f"), ("search_s", "search s", ".2f"), ("qps", "queries/s", ",.0f"),
        ("recall", f"recall@{args.k}", ".4f"), ("index_mb", "index MB", ",.1f"),
    ]))
    print(json.dumps({"n": len(corpus), "queries": len(queries), "k": args.k}))


if __name__ == "__main__":
    main()
