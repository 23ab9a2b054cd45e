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
