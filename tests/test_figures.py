"""A round's figures from its mine tasks' tallies: what the driver holds instead of every negative."""

import numpy as np

from hardneg.pipelines.figures import SAMPLE, Tally, count_figures, distribution, geo_figures, per_query_histogram


def test_tallies_merged_in_any_order_give_the_figures_of_all_values_and_keep_a_bounded_sample():
    """The mine tasks' figures (``Tally.result``) merged in the driver: exact quantiles below ``SAMPLE`` values,
    a uniform sample of ``SAMPLE`` above, whatever order the tasks finish in."""
    rng = np.random.default_rng(0)
    tasks = [(rng.integers(0, 4, size=n), rng.gamma(2.0, 30.0, size=m)) for n, m in ((50, 900), (3, 7), (400, 5000))]

    def merged(order, scale=1):
        total = Tally(3)
        for i in order:
            counts, km = tasks[i]
            task = Tally(3)
            task.add(per_query_histogram(counts, 3), rows=len(counts), sums={"removed": {"group": 2}, "depth": 10 + i},
                     samples={"negative_km": np.tile(km, scale)})
            total.add(**task.result(seed=i))
        return total

    counts = np.concatenate([c for c, _ in tasks])
    km = np.concatenate([k for _, k in tasks])
    forward, backward = merged([0, 1, 2]), merged([2, 0, 1])
    figures = geo_figures(forward, {"invalid": 0})
    assert figures == geo_figures(backward, {"invalid": 0})
    assert figures["negative_km"] == distribution(km) and figures["removed"] == {"group": 6} and figures["candidates_per_query"] == 12
    assert count_figures(forward) == {"queries": 453, "rows": 453, "negatives": int(counts.sum()),
                                      "negatives_per_query": round(counts.mean(), 3), "short_queries": int((counts < 3).sum()),
                                      "queries_without_negatives": int((counts == 0).sum())}
    big = merged([0, 1, 2], scale=8)  # 47,256 values: a sample of SAMPLE of them, the same whatever the order
    assert len(big.values("negative_km")) == SAMPLE and np.array_equal(np.sort(big.values("negative_km")),
                                                                       np.sort(merged([1, 2, 0], scale=8).values("negative_km")))
    assert abs(distribution(big.values("negative_km"))["p50"] - np.median(km)) < 0.05 * np.median(km)
