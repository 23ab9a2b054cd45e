"""Micro-benchmark: ``exact_search`` (``ExactIndex``'s chunked matmul + top-k with its tie rule) on 2,000
queries against 100,000 random unit vectors at MiniLM's 384 dimensions, with no ties and with every
vector five times over (median of 5 runs, 2 torch threads). Search time does not depend on what the
vectors mean, only on their count, width and ties; the real-corpus figure is bench/README.md's mixed
round on 34,006 cities. Run it under another checkout's ``PYTHONPATH`` to compare.

    .venv/bin/python bench/exact_topk.py
    PYTHONPATH=/tmp/old978 .venv/bin/python bench/exact_topk.py
"""

import time

import numpy as np
import torch

from hardneg.search.exact import exact_search


def main() -> None:
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)

    def unit(n: int, d: int = 384) -> np.ndarray:
        v = rng.standard_normal((n, d)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    corpus, queries = unit(100_000), unit(2_000)
    copies = np.repeat(unit(20_000), 5, axis=0)
    print("| corpus | median search s (2,000 queries, k=50) |\n|---|---|")
    for name, vectors in (("100,000 distinct", corpus), ("20,000 x 5 copies", copies)):
        times = []
        for _ in range(5):
            started = time.perf_counter()
            exact_search(queries, vectors, 50)
            times.append(time.perf_counter() - started)
        print(f"| {name} | {sorted(times)[2]:.3f} |")


if __name__ == "__main__":
    main()
