"""One-screen summaries printed at the end of a command."""

from __future__ import annotations


def embed_summary(manifest: dict, output: str) -> str:
    """Rows, time, rows/s and where the shards went."""
    dropped = sum(manifest.get("dropped", {}).values())
    lines = [
        "hardneg embed: done",
        f"  rows embedded : {manifest['rows']:,} (of {manifest['input_rows']:,}; dropped {dropped:,})",
        f"  model         : {manifest['model']} ({manifest['model_hash']}, {manifest['pooling']} pooling, dim {manifest['dim']}, {manifest['dtype']})",
        f"  time          : {manifest['seconds']:.1f} s ({manifest['rows_per_second']:,.0f} rows/s)",
        f"  output        : {output}",
    ]
    return "\n".join(lines)


def _dist(d: dict) -> str:
    if not d:
        return "-"
    return f"mean {d['mean']:.3f}  p5 {d['p5']:.3f}  p50 {d['p50']:.3f}  p95 {d['p95']:.3f}"


def round_summary(manifest: dict) -> str:
    """Queries, negatives, score distributions, filters, recall, per-stage time and rows/s, outputs."""
    f = manifest["figures"]
    removed = ", ".join(f"{name} {count:,}" for name, count in f["removed"].items() if count) or "none"
    recall = f.get("recall")
    recall_line = (f"recall@{recall['k']} {recall['recall']:.4f} against exact search on {recall['queries']:,} queries"
                   if recall else "exact search (recall 1.0)")
    lines = [
        f"hardneg: round {manifest['round']} done (encoder {manifest['encoder']}, {manifest['model']})",
        f"  queries          : {f['queries']:,} ({f['rows']:,} rows, corpus {manifest['counts']['corpus']:,})",
        f"  negatives/query  : {f['negatives_per_query']:.2f} ({f['short_queries']:,} queries short, "
        f"{f['queries_without_negatives']:,} with none)",
        f"  positive scores  : {_dist(f['positive_scores'])}",
        f"  negative scores  : {_dist(f['negative_scores'])}",
        f"  removed by filter: {removed} (of {f['candidates_per_query']} candidates per query)",
        f"  false negatives  : {f['negatives_equal_to_positive_text']} negatives equal a positive's text",
        f"  index            : {recall_line}",
        "  stage            :   seconds      rows      rows/s",
    ]
    for name, stage in manifest["stages"].items():
        lines.append(f"    {name:<15}: {stage['seconds']:9.2f} {stage['rows']:9,} {stage['rows_per_second']:11,.0f}")
    lines.append(f"  total            : {manifest['seconds']:.1f} s")
    if f.get("eval"):
        lines.append(f"  held-out eval    : {_eval_text(f)}")
    for name, url in manifest["outputs"].items():
        lines.append(f"  {name + ' parquet':<17}: {url}")
    return "\n".join(lines)


def _eval_text(figures: dict) -> str:
    ev = figures.get("eval")
    if not ev:
        return "-"
    recall = ev[f"recall@{ev['k']}"]
    return f"recall@{ev['k']} {recall:.4f}  ndcg@10 {ev['ndcg@10']:.4f}  ({ev['queries']} held-out)"


def run_summary(state) -> str:
    """Rounds (encoder, rows, negatives/query, held-out eval) and recorded checkpoints of a ``RunState``."""
    lines = [f"hardneg run {state.run_dir}", f"  rounds ({len(state.rounds)}):"]
    for r in state.rounds:
        f = r.manifest["figures"]
        lines.append(f"    {r.index:5d}  encoder {r.encoder:<40} rows {f['rows']:>8,}  neg/query {f['negatives_per_query']:.2f}"
                     f"  eval {_eval_text(f)}")
    lines.append(f"  checkpoints ({len(state.checkpoints)}):")
    for c in state.checkpoints:
        loss = f"  loss {c.metrics['loss']:.4f}" if "loss" in c.metrics else ""
        lines.append(f"    block {c.block}  {c.id}  epoch {c.epoch}  step {c.step}  trained on round {c.round}{loss}")
        lines.append(f"      {c.path}")
    return "\n".join(lines)
