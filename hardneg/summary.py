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


def _km(d: dict) -> str:
    if not d:
        return "-"
    return f"mean {d['mean']:,.1f}  p5 {d['p5']:,.1f}  p50 {d['p50']:,.1f}  p95 {d['p95']:,.1f} km"


def _geo_lines(manifest: dict) -> list[str]:
    f = manifest["figures"]
    removed = ", ".join(f"{name} {count:,}" for name, count in f["removed"].items() if count) or "none"
    lines = [
        f"hardneg: round {manifest['round']} done (geographic miner, no model)",
        f"  places           : {f['queries']:,} ({f['rows']:,} rows written; dropped {sum(f['dropped_places'].values()):,})",
        f"  negatives/query  : {f['negatives_per_query']:.2f} ({f['short_queries']:,} queries short, "
        f"{f['queries_without_negatives']:,} with none)",
        f"  negative distance: {_km(f['negative_km'])}",
        f"  removed by rule  : {removed} (up to {f['candidates_per_query']} candidates per query; "
        f"{f['uncertified_queries']:,} queries not certified nearest)",
    ]
    if "together_share" in f:
        lines.append(f"  batches          : {f['batches']:,}; {f['together_share']:.1%} of (anchor, negative) pairs share a batch")
    return lines


def round_summary(manifest: dict) -> str:
    """Queries, negatives, score (or km) distributions, filters, recall, per-stage time and rows/s, outputs."""
    f = manifest["figures"]
    if manifest.get("miner") == "geographic":
        return _stage_lines(manifest, _geo_lines(manifest))
    removed = ", ".join(f"{name} {count:,}" for name, count in f["removed"].items() if count) or "none"
    recall = f.get("recall")
    recall_line = (f"recall@{recall['k']} {recall['recall']:.4f} against exact search on {recall['queries']:,} queries"
                   if recall else "exact search (recall 1.0)")
    lines = [
        f"hardneg: round {manifest['round']} done (encoder {manifest['encoder']}, {manifest['model']})",
        f"  queries          : {f['queries']:,} ({f['rows']:,} rows, corpus {manifest['counts']['corpus']:,})",
        f"  negatives/query  : {f['negatives_per_query']:.2f} ({f['short_queries']:,} queries short, "
        f"{f['queries_without_negatives']:,} with none)",
        f"  scores           : {f.get('scored_by', 'bi-encoder')}",
        f"  positive scores  : {_dist(f['positive_scores'])}",
        f"  negative scores  : {_dist(f['negative_scores'])}",
        f"  removed by filter: {removed} (of {f['candidates_per_query']} candidates per query)",
        f"  false negatives  : {f['negatives_equal_to_positive_text']} negatives equal a positive's text",
        f"  index            : {recall_line}",
    ]
    return _stage_lines(manifest, lines)


def _stage_lines(manifest: dict, lines: list[str]) -> str:
    lines.append("  stage            :   seconds      rows      rows/s")
    for name, stage in manifest["stages"].items():
        lines.append(f"    {name:<15}: {stage['seconds']:9.2f} {stage['rows']:9,} {stage['rows_per_second']:11,.0f}")
    lines.append(f"  total            : {manifest['seconds']:.1f} s")
    for name, url in manifest["outputs"].items():
        lines.append(f"  {name + ' parquet':<17}: {url}")
    return "\n".join(lines)
