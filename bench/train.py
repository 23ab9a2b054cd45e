"""Benchmark: does re-mining help? Same model, same steps, same held-out queries; four arms in one run.

Corpus: docstring pairs of installed packages (bench/corpora.py); ``--eval-fraction`` of the queries are
held out (never mined, never trained on). Model: the packaged all-MiniLM-L6-v2. Every arm trains
``--epochs`` x ``--steps`` steps of batch ``--batch-size`` from the same round 0:

- ``in-batch``: in-batch negatives only (``train.negatives_per_row=0``), data mined once;
- ``mined-once``: one mined negative per row, mined once with the base model (``remine_every=0``);
- ``remined``: one mined negative per row, re-mined with the newest checkpoint every epoch;
- ``remined-async``: as ``remined``, the re-mine running on a Ray task while the next epoch trains.

Before/after: held-out recall@10 and nDCG@10 of the base model (round 0's eval) and of each arm's
last checkpoint (a final ``remine`` with it, whose round evaluates it). Time: seconds spent training
(the blocks) and re-mining (rounds made during the loop), and the loop's wall time.

    .venv/bin/python bench/train.py --pairs 1500 --epochs 3 --steps 20 [--use-gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ARMS = {
    "in-batch": {"negatives_per_row": 0, "remine_every": 0},
    "mined-once": {"negatives_per_row": 1, "remine_every": 0},
    "remined": {"negatives_per_row": 1, "remine_every": 1},
    "remined-async": {"negatives_per_row": 1, "remine_every": 1, "asynchronous": True},
}
# On a CPU-only machine the async re-mine shares the CPUs with the trainer: both take half a CPU so a
# whole one stays free for tokenizer and read tasks (see hardneg/pipelines/loop.py).
CPU_ASYNC = {"train": {"cpus_per_worker": 0.5}, "embed": {"cpus_per_actor": 0.5}}


def base_config(args: argparse.Namespace, out: str) -> dict:
    from corpora import docstring_pairs

    pairs_path = os.path.join(out, "pairs.jsonl")
    with open(pairs_path, "w") as handle:
        for pair in docstring_pairs(limit=args.pairs):
            handle.write(json.dumps({"anchor": pair["anchor"], "positive": pair["positive"]}) + "\n")
    return {
        "queries": {"path": pairs_path, "format": "pairs"},
        "model": {"max_length": args.max_length},
        "embed": {"batch_size": 64, "gpus_per_actor": 1 if args.use_gpu else None},
        "mine": {"num_negatives": 3, "range_min": 1, "range_max": 30, "relative_margin": 0.05},
        "train": {"epochs": args.epochs, "max_steps_per_epoch": args.steps, "batch_size": args.batch_size,
                  "learning_rate": args.learning_rate, "eval_fraction": args.eval_fraction, "use_gpu": args.use_gpu},
    }


def run_arm(name: str, data: dict, round0_dir: str, out: str) -> dict:
    from hardneg.config import parse_config
    from hardneg.pipelines.loop import train_loop
    from hardneg.pipelines.remine import remine, run_state

    run_dir = os.path.join(out, name)
    shutil.copytree(round0_dir, run_dir)  # every arm starts from the same committed round 0
    data = json.loads(json.dumps(data))
    data["run_dir"] = run_dir
    data["train"].update(ARMS[name])
    if ARMS[name].get("asynchronous") and not data["train"]["use_gpu"]:
        for section, values in CPU_ASYNC.items():
            data[section].update(values)
    cfg = parse_config(data)
    started = time.perf_counter()
    blocks = train_loop(cfg)
    wall = time.perf_counter() - started
    loop_rounds = run_state(run_dir).rounds[1:]
    _, final = remine(cfg, blocks[-1].path)
    return {
        "arm": name, "steps": blocks[-1].step, "rounds": 1 + len(loop_rounds), "wall_s": wall,
        "train_s": sum(b.metrics["seconds"] for b in blocks), "remine_s": sum(r.manifest["seconds"] for r in loop_rounds),
        "after": final["figures"]["eval"], "loss": blocks[-1].metrics["loss"],
    }


def table(base: dict, results: list[dict]) -> str:
    lines = [
        "| arm | steps | rounds | recall@10 | nDCG@10 | loop wall s | training s | re-mining s |",
        "|---|---|---|---|---|---|---|---|",
        f"| base model (before) | 0 | 1 | {base['recall@10']:.4f} | {base['ndcg@10']:.4f} | - | - | - |",
    ]
    for r in results:
        a = r["after"]
        lines.append(f"| {r['arm']} | {r['steps']} | {r['rounds']} | {a['recall@10']:.4f} | {a['ndcg@10']:.4f} "
                     f"| {r['wall_s']:.1f} | {r['train_s']:.1f} | {r['remine_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", default=os.path.join(HERE, "out", "train"))
    args = parser.parse_args()

    from hardneg.config import parse_config
    from hardneg.pipelines.run import run_round
    from hardneg.ray_runtime import init_ray

    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    init_ray()
    data = base_config(args, args.out)
    round0_dir = os.path.join(args.out, "round0")
    round0 = run_round(parse_config({**data, "run_dir": round0_dir}), 0, holdout=True)
    results = []
    for name in args.arms.split(","):  # the table so far after every arm, in case the run is cut short
        results.append(run_arm(name, data, round0_dir, args.out))
        print(f"\n{round0['counts']['queries']} queries ({round0['heldout']['queries']} held out), corpus "
              f"{round0['counts']['corpus']}, round 0 mined in {round0['seconds']:.1f} s; {args.epochs} epochs x "
              f"{args.steps} steps, batch {args.batch_size}\n", flush=True)
        print(table(round0["figures"]["eval"], results), flush=True)
        with open(os.path.join(args.out, "results.json"), "w") as handle:
            json.dump({"args": vars(args), "round0": round0["figures"]["eval"], "arms": results}, handle, indent=2)


if __name__ == "__main__":
    main()
