"""Benchmark: `hardneg run` and `hardneg.mine_hard_negatives` against sentence-transformers' `mine_hard_negatives`,
same pairs, same model, one run.

Pairs: (summary line, rest of docstring) of installed packages (bench/corpora.py), real text that
ships with the packages. Both arms mine ``num_negatives`` with the same range and relative margin
(NV-Retriever's TopK-PercPos 0.05), ``sampling_strategy=top``, exact search on the CPU (ST with
``use_faiss=False``; ``--st-faiss`` gives it faiss' IndexFlatIP instead). Each arm runs in its own
process; peak RSS covers the whole process tree (Ray's processes too).

Quality, from the two outputs:

- false negatives: mined negatives whose text equals a positive of the same anchor (several
  docstrings share a summary line, and some passages are copied between functions);
- agreement: share of (anchor, positive) rows whose negative set is the same in both arms.

    .venv/bin/python bench/mine.py --n 20000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

SETTINGS = dict(range_min=0, range_max=50, relative_margin=0.05, num_negatives=3, sampling_strategy="top")


def build_pairs(n: int, path: str) -> int:
    from corpora import docstring_pairs

    pairs = [{"anchor": p["anchor"], "positive": p["positive"]} for p in docstring_pairs()[:n]]
    with open(path, "w") as handle:
        for pair in pairs:
            handle.write(json.dumps(pair) + "\n")
    return len(pairs)


def arm_st(pairs_path: str, out: str, batch_size: int, use_faiss: bool) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from hardneg.encoder import default_model_path

    pairs = [json.loads(line) for line in open(pairs_path)]
    started = time.perf_counter()
    model = SentenceTransformer(default_model_path(), device="cpu")
    mined = mine_hard_negatives(Dataset.from_list(pairs), model, output_format="n-tuple", use_faiss=use_faiss,
                                batch_size=batch_size, verbose=False, **SETTINGS)
    seconds = time.perf_counter() - started
    mined.to_json(out)
    return {"arm": "ST mine_hard_negatives" + (" (faiss)" if use_faiss else ""), "queries": len(pairs), "stage_s": seconds}


def arm_hardneg(pairs_path: str, out: str, batch_size: int, in_process: str) -> dict:
    """What `hardneg run` runs (``cli.mine_round``: the door, the lock, Ray or in process, the round)."""
    from hardneg import storage
    from hardneg.cli import mine_round
    from hardneg.config import parse_config

    started = time.perf_counter()
    cfg = parse_config({"run_dir": tempfile.mkdtemp(prefix="hardneg-bench-"), "queries": {"path": pairs_path},
                        "embed": {"batch_size": batch_size}, "mine": {**SETTINGS, "format": "n-tuple"},
                        "ray": {"in_process": in_process}})
    manifest = mine_round(cfg, "run")
    seconds = time.perf_counter() - started
    storage.read_table(manifest["outputs"]["n-tuple"]).to_pandas().to_json(out, orient="records", lines=True)
    stages = {name: stage["seconds"] for name, stage in manifest["stages"].items()}
    name = "hardneg run" + {"never": " (Ray)", "always": " (in process)"}.get(in_process, "")
    return {"arm": name, "queries": manifest["counts"]["rows"], "stage_s": seconds, "stages": stages}


def arm_api(pairs_path: str, out: str, batch_size: int) -> dict:
    """``hardneg.mine_hard_negatives``, called as the ST arm calls ST's (Ray's start-up inside the timing)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from hardneg import mine_hard_negatives
    from hardneg.encoder import default_model_path

    pairs = [json.loads(line) for line in open(pairs_path)]
    started = time.perf_counter()
    model = SentenceTransformer(default_model_path(), device="cpu")
    mined = mine_hard_negatives(Dataset.from_list(pairs), model, output_format="n-tuple", batch_size=batch_size, verbose=False,
                                **SETTINGS)
    seconds = time.perf_counter() - started
    mined.to_json(out)
    return {"arm": "hardneg.mine_hard_negatives", "queries": len(pairs), "stage_s": seconds}


def negative_sets(path: str) -> dict:
    out = {}
    for line in open(path):
        row = json.loads(line)
        out[(row["anchor"], row["positive"])] = {v for k, v in row.items() if k.startswith("negative") and v is not None}
    return out


def false_negatives(mined: dict, pairs_path: str) -> tuple[int, int]:
    """(negatives equal to a positive of the same anchor, all negatives)."""
    positives = defaultdict(set)
    for line in open(pairs_path):
        pair = json.loads(line)
        positives[pair["anchor"]].add(pair["positive"])
    bad = total = 0
    for (anchor, _), negatives in mined.items():
        total += len(negatives)
        bad += len(negatives & positives[anchor])
    return bad, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="pairs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--st-faiss", action="store_true", help="ST arm with use_faiss=True")
    parser.add_argument("--arms", default="st,hardneg,hardneg-ray,api", help="arms to run, in order (the first is the peer)")
    parser.add_argument("--arm", choices=["st", "hardneg", "hardneg-ray", "api"], help=argparse.SUPPRESS)
    parser.add_argument("--pairs", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        if args.arm == "api":
            print(json.dumps(arm_api(args.pairs, args.out, args.batch_size)))
            return
        result = (arm_st(args.pairs, args.out, args.batch_size, args.st_faiss) if args.arm == "st"
                  else arm_hardneg(args.pairs, args.out, args.batch_size, "never" if args.arm == "hardneg-ray" else "auto"))
        print(json.dumps(result))
        return

    from measure import markdown_table, run_arm

    work = tempfile.mkdtemp(prefix="hardneg-bench-")
    pairs_path = os.path.join(work, "pairs.jsonl")
    n = build_pairs(args.n, pairs_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HARDNEG_PROGRESS="0")
    rows, outputs = [], {}
    # hardneg: `hardneg run` as a user runs it (in process when the inputs are laptop-sized, ray.in_process=auto);
    # hardneg-ray: the same on a local Ray instance (ray.in_process=never); api: hardneg.mine_hard_negatives
    arms = args.arms.split(",")
    for arm in arms:
        out = os.path.join(work, f"{arm}.jsonl")
        argv = [sys.executable, __file__, "--arm", arm, "--pairs", pairs_path, "--out", out, "--batch-size", str(args.batch_size)]
        result = run_arm(argv + (["--st-faiss"] if args.st_faiss else []), env=env)
        outputs[arm] = negative_sets(out)
        result["rows_out"] = sum(1 for _ in open(out))
        bad, total = false_negatives(outputs[arm], pairs_path)
        result.update(queries_per_s=n / result["wall_s"], false_negatives=bad, negatives=total,
                      fn_rate=bad / max(total, 1), per_query=total / max(len(outputs[arm]), 1))
        rows.append(result)
    print(f"\n{n:,} (anchor, positive) pairs of installed packages' docstrings; {SETTINGS}; CPU, batch size {args.batch_size}\n")
    print(markdown_table(rows, [
        ("arm", "arm", ""), ("rows_out", "n-tuple rows out", ",d"), ("wall_s", "wall s", ".1f"), ("queries_per_s", "pairs/s", ",.1f"),
        ("peak_rss_mb", "peak RSS MB", ",.0f"), ("per_query", "negatives/row", ".2f"),
        ("false_negatives", "false negatives", ",d"), ("fn_rate", "FN rate", ".4f"),
    ]))
    peer, theirs = arms[0], outputs[arms[0]]
    for arm, row in zip(arms[1:], rows[1:]):
        ours = outputs[arm]
        union, both = set(theirs) | set(ours), set(theirs) & set(ours)
        agree = sum(theirs.get(key) == ours.get(key) for key in union) / max(len(union), 1)
        same = sum(theirs[key] == ours[key] for key in both) / max(len(both), 1)
        print(f"\n{arm} against {peer}: same negative set in {agree:.4f} of the {len(union):,} (anchor, positive) rows either "
              f"wrote; {same:.4f} of the {len(both):,} both wrote (exact search on both sides: recall 1.0)")
        if "stages" in row:
            print(f"{arm} stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in row["stages"].items()))


if __name__ == "__main__":
    main()
