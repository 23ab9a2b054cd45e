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
        f"  resumed       : {manifest.get('resumed_rows', 0):,} rows from committed parts ({manifest.get('parts', 1)} part(s))",
        f"  output        : {output}",
    ]
    return "\n".join(lines)


def _dist(d: dict) -> str:
    if not d:
        return "-"
    return f"mean {d['mean']:.3f}  p5 {d['p5']:.3f}  p50 {d['p50']:.3f}  p95 {d['p95']:.3f}"


def _km(d: dict) -> str:
    if not d:
        return "-"
    return f"mean {d['mean']:,.1f}  p5 {d['p5']:,.1f}  p50 {d['p50']:,.1f}  p95 {d['p95']:,.1f} km"


def _removed(counts: dict) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in counts.items() if count) or "none"


def _recall_line(recall) -> str:
    if not recall:
        return "exact search (recall 1.0)"
    return f"recall@{recall['k']} {recall['recall']:.4f} against exact search on {recall['queries']:,} queries"


def round_summary(manifest: dict) -> str:
    """One block for every miner: what was mined from what, negatives per query, the miner's own figures,
    per-stage time and rows/s, held-out eval, outputs."""
    f, miner = manifest["figures"], manifest.get("miner", "similarity")
    mine = manifest["config"]["mine"]
    model = "no model" if manifest["model"] is None else f"encoder {manifest['encoder']}, {manifest['model']}"
    what = {"similarity": "", "geographic": "geographic miner, ",
            "mixed": f"mixed miner: {mine['geo_negatives']} geographic of {mine['num_negatives']} negatives; "}[miner]
    queries = "places" if miner != "similarity" else "queries"
    extra = (f"dropped {sum(f['dropped_places'].values()):,}" if "dropped_places" in f
             else f"corpus {manifest['counts']['corpus']:,}")
    short = f"; {f['geo_short_queries']:,} short of geographic ones" if "geo_short_queries" in f else ""
    lines = [
        f"hardneg: round {manifest['round']} done ({what}{model})",
        f"  {queries:<17}: {f['queries']:,} ({f['rows']:,} rows written; {extra})",
        f"  negatives/query  : {f['negatives_per_query']:.2f} ({f['short_queries']:,} queries short, "
        f"{f['queries_without_negatives']:,} with none{short})",
    ]
    lines += MINER_LINES[miner](f)
    if "together_share" in f:
        lines.append(f"  batches          : {f['batches']:,}; {f['together_share']:.1%} of (anchor, negative) pairs share a batch")
    return _stage_lines(manifest, lines)


def _similarity_lines(f: dict) -> list[str]:
    return [
        f"  scores           : {f.get('scored_by', 'bi-encoder')}",
        f"  positive scores  : {_dist(f['positive_scores'])}",
        f"  negative scores  : {_dist(f['negative_scores'])}",
        f"  removed by filter: {_removed(f['removed'])} (of {f['candidates_per_query']} candidates per query)",
        f"  false negatives  : {f['negatives_equal_to_positive_text']} negatives equal a positive's text",
        f"  index            : {_recall_line(f.get('recall'))}",
    ]


def _geo_lines(f: dict) -> list[str]:
    return [
        f"  negative distance: {_km(f['negative_km'])}",
        f"  removed by rule  : {_removed(f['removed'])} (up to {f['candidates_per_query']} candidates per query; "
        f"{f['uncertified_queries']:,} queries not certified nearest)",
    ]


def _mixed_lines(f: dict) -> list[str]:
    depth, removed, lines = f["candidates_per_query"], f["removed"], []
    for name, source in f["by_source"].items():
        lines += [f"  {name:<17}: {source['negatives']:,} negatives",
                  f"    distance       : {_km(source['negative_km'])}",
                  f"    scores         : {_dist(source['negative_scores'])}"]
    return lines + [
        f"  removed (geo)    : {_removed(removed['geographic'])} (up to {depth['geographic']} candidates per query; "
        f"{f['uncertified_queries']:,} queries not certified nearest)",
        f"  removed (sim)    : {_removed(removed['similarity'])} (of {depth['similarity']} candidates per query)",
        f"  index            : {_recall_line(f['recall'])}",
    ]


MINER_LINES = {"similarity": _similarity_lines, "geographic": _geo_lines, "mixed": _mixed_lines}


def _stage_lines(manifest: dict, lines: list[str]) -> str:
    lines.append("  stage            :   seconds      rows      rows/s")
    for name, stage in manifest["stages"].items():
        lines.append(f"    {name:<15}: {stage['seconds']:9.2f} {stage['rows']:9,} {stage['rows_per_second']:11,.0f}")
    lines.append(f"  total            : {manifest['seconds']:.1f} s")
    if manifest["figures"].get("eval"):
        lines.append(f"  held-out eval    : {_eval_text(manifest['figures'])}")
    for name, url in manifest["outputs"].items():
        lines.append(f"  {name + ' parquet':<17}: {url}")
    return "\n".join(lines)


def _eval_text(figures: dict) -> str:
    ev = figures.get("eval")
    if not ev:
        return "-"
    recalls = "  ".join(f"recall@{k} {ev[f'recall@{k}']:.4f}" for k in eval_cutoffs(ev))
    return f"{recalls}  ndcg@10 {ev['ndcg@10']:.4f}  ({ev['queries']} held-out {ev.get('of', 'queries')})"


def eval_cutoffs(ev: dict) -> list[int]:
    """The k of every ``recall@k`` of an eval manifest, ascending (a places eval has 1, 5, 10 and ``train.eval_k``)."""
    return sorted(int(name.split("@")[1]) for name in ev if name.startswith("recall@"))


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
        if c.metrics.get("eval"):  # the last checkpoint of a cross-view run: no round evaluates it
            lines.append(f"      eval {_eval_text(c.metrics)}")
        lines.append(f"      {c.path}")
    return "\n".join(lines)
