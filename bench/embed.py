"""Benchmark: `hardneg embed` against `SentenceTransformer.encode`, same model, same real texts, one run.

Texts: docstring summaries and passages of installed packages (bench/corpora.py), at least 20,000.
Each arm runs in its own process; peak RSS covers the whole process tree (Ray's processes too).

    .venv/bin/python bench/embed.py --n 20000 [--device cuda] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def build_corpus(n: int, path: str, kind: str) -> int:
    from corpora import docstring_pairs

    seen, rows = set(), []
    for pair in docstring_pairs():
        text = pair[kind]
        if text not in seen:
            seen.add(text)
            rows.append({"id": len(rows), "text": text})
        if len(rows) >= n:
            break
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return len(rows)


def arm_st(corpus: str, batch_size: int, device: str) -> dict:
    from sentence_transformers import SentenceTransformer

    from hardneg.encoder import default_model_path

    texts = [json.loads(line)["text"] for line in open(corpus)]
    model = SentenceTransformer(default_model_path(), device=device)
    if device == "cuda":
        model.half()
    started = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    return {"arm": "SentenceTransformer.encode" + (" (fp16)" if device == "cuda" else ""), "items": len(texts), "stage_s": seconds}


def arm_hardneg(corpus: str, batch_size: int, device: str) -> dict:
    from hardneg.config import parse_config
    from hardneg.pipelines.embed import embed_corpus
    from hardneg.ray_runtime import init_ray

    init_ray()
    out = tempfile.mkdtemp(prefix="hardneg-bench-")
    cfg = parse_config({"corpus": {"path": corpus}, "embed": {"batch_size": batch_size}})
    manifest = embed_corpus(cfg, os.path.join(out, "emb"))
    return {"arm": "hardneg embed" + (" (bf16)" if device == "cuda" else ""), "items": manifest["rows"], "stage_s": manifest["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--kind", choices=["anchor", "positive"], default="anchor", help="summaries (short) or passages (long)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arm", choices=["st", "hardneg"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        result = (arm_st if args.arm == "st" else arm_hardneg)(args.corpus, args.batch_size, args.device)
        print(json.dumps(result))
        return

    from measure import markdown_table, run_arm

    corpus = os.path.join(tempfile.mkdtemp(prefix="hardneg-bench-"), "corpus.jsonl")
    n = build_corpus(args.n, corpus, args.kind)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HARDNEG_PROGRESS="0")
    rows = []
    for arm in ("st", "hardneg"):
        argv = [sys.executable, __file__, "--arm", arm, "--corpus", corpus, "--batch-size", str(args.batch_size), "--device", args.device]
        result = run_arm(argv, env=env)
        result["items_per_s"] = result["items"] / result["stage_s"]
        result["e2e_items_per_s"] = result["items"] / result["wall_s"]
        rows.append(result)
    base = rows[0]
    for row in rows:
        row["ratio"] = row["items_per_s"] / base["items_per_s"]
        row["e2e_ratio"] = row["e2e_items_per_s"] / base["e2e_items_per_s"]
    print(f"\n{n} texts ({args.kind}s of installed packages' docstrings), batch size {args.batch_size}, device {args.device}\n")
    print(markdown_table(rows, [
        ("arm", "arm", ""), ("items", "texts", ",d"), ("stage_s", "embed s", ".1f"), ("items_per_s", "texts/s", ",.0f"),
        ("ratio", "ratio", ".2f"), ("wall_s", "process wall s", ".1f"), ("e2e_ratio", "wall ratio", ".2f"), ("peak_rss_mb", "peak RSS MB", ",.0f"),
    ]))


if __name__ == "__main__":
    main()
