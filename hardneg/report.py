"""The run report: one self-contained HTML page (``RUN_DIR/report.html``) built from the manifests.

Per round: positive vs negative score histograms, negatives per query, what each filter removed,
index recall, stage times and rows/s, and a few sample queries next to their positive and
negatives; geographic rounds add a distance histogram and a lat/lon map of a few batches. For the
training loop: held-out recall@k / nDCG@10 per round and the training loss per block.

The numbers come from the committed manifests (``run_state``); the distributions from a bounded
sample of each round's mined Parquet (at most ``SAMPLE_ROWS`` rows, read a batch at a time, only
the columns a figure needs), so the driver never reads a whole large table. Figures are drawn with
matplotlib's Agg backend and inlined as base64 PNG: the page loads nothing from the network.

Example::

    url = write_report("runs/quickstart")            # -> runs/quickstart/report.html
    html = build_report("s3://bucket/runs/a")
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from typing import Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa

from hardneg import storage
from hardneg.errors import InputError
from hardneg.summary import eval_cutoffs

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
SAMPLE_ROWS = 20_000  # rows read for the histograms, per round
SAMPLE_QUERIES = 5  # queries shown next to their positive and negatives
TEXT_CHARS = 120  # texts in the sample table are cut to this many characters
MAP_BATCHES = 6  # batches (or places with their negatives) drawn on the lat/lon map
POSITIVE, NEGATIVE = "#1b9e77", "#d95f02"


def report_location(run_dir: str) -> storage.Location:
    """Where ``hardneg`` writes the report of ``run_dir``."""
    return storage.resolve(run_dir).join(REPORT_NAME)


def write_report(run_dir: str, output: Optional[str] = None) -> str:
    """Build the report of ``run_dir`` and write it to ``output`` (default ``RUN_DIR/report.html``); returns its URL.

    The report is derived data: it is rewritten whenever a command finishes.
    """
    out = storage.resolve(output) if output else report_location(run_dir)
    storage.write_text(out, build_report(run_dir))
    logger.debug("report written: %s", out.url)
    return out.url


def report_line(run_dir: str) -> str:
    """Write the report of ``run_dir`` and return the summary line naming it (a failure is logged, not raised:
    the committed rounds stand without their report, and ``hardneg report RUN_DIR`` makes it again)."""
    try:
        return f"  {'report':<17}: {write_report(run_dir)}"
    except Exception as err:  # noqa: BLE001 - the report is derived; never fail a finished run over it
        logger.warning("report not written (%s: %s); make it with `hardneg report %s`", type(err).__name__, err, run_dir)
        return f"  {'report':<17}: not written (see the warning above)"


def build_report(run_dir: str) -> str:
    """The report of ``run_dir`` (local or ``s3://``) as one HTML document."""
    from hardneg.pipelines.remine import run_state

    state = run_state(run_dir)
    body = [f"<h1>hardneg run report</h1><p class='meta'>{_e(state.run_dir)} &middot; {len(state.rounds)} round(s), "
            f"{len(state.checkpoints)} checkpoint(s) &middot; written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}</p>"]
    if not state.rounds:
        body.append("<p>No committed round yet.</p>")
    if state.checkpoints or any(r.manifest["figures"].get("eval") for r in state.rounds):
        body.append(training_section(state))
    for info in reversed(state.rounds):
        body.append(round_section(info.manifest, storage.resolve(state.run_dir).join("rounds", f"{info.index:05d}")))
    return PAGE.format(title=_e(f"hardneg report: {state.run_dir}"), body="\n".join(body))


# ---- sections --------------------------------------------------------------------------------


def training_section(state) -> str:
    """Held-out recall@k and nDCG@10 per round, and the loss of each training block."""
    parts = ["<section id='training'><h2>Training loop</h2><div class='figures'>"]
    evals = [(r.index, r.manifest["figures"]["eval"]) for r in state.rounds if r.manifest["figures"].get("eval")]
    if evals:
        k = evals[-1][1]["k"]
        fig, ax = _figure(5.5, 3.0)
        rounds = [index for index, _ in evals]
        ax.plot(rounds, [ev[f"recall@{ev['k']}"] for _, ev in evals], "o-", label=f"recall@{k}")
        ax.plot(rounds, [ev["ndcg@10"] for _, ev in evals], "s-", label="nDCG@10")
        ax.set(xlabel="round", ylabel="held-out score", title=f"Held-out retrieval ({evals[-1][1]['queries']} queries)")
        ax.set_xticks(rounds)
        ax.legend()
        parts.append(_img(fig, "held-out recall and nDCG per round"))
    losses = [(c.block, c.metrics["loss"]) for c in state.checkpoints if "loss" in c.metrics]
    if losses:
        fig, ax = _figure(5.5, 3.0)
        ax.plot([b for b, _ in losses], [loss for _, loss in losses], "o-", color=NEGATIVE)
        ax.set(xlabel="training block", ylabel="mean loss", title="Training loss (last epoch of each block)")
        ax.set_xticks([b for b, _ in losses])
        parts.append(_img(fig, "training loss per block"))
    parts.append("</div>")
    rows = [[c.block, c.round, c.id, c.epoch, c.step, _num(c.metrics.get("loss"))] for c in state.checkpoints]
    if rows:
        parts.append(_table(["block", "trained on round", "checkpoint", "epoch", "step", "loss"], rows))
    parts.append("</section>")
    return "\n".join(parts)


def round_section(manifest: dict, here: storage.Location) -> str:
    """Everything about one committed round (``here``: its folder, whose ``mined/`` is sampled)."""
    index, f, miner = manifest["round"], manifest["figures"], manifest.get("miner", "similarity")
    sample = read_sample(here.join("mined").url, _sample_columns(miner))
    parts = [f"<section class='round' id='round-{index}'><h2>Round {index}</h2>",
             f"<p class='meta'>{_e(miner)} miner &middot; encoder {_e(manifest['encoder'])} &middot; model "
             f"{_e(manifest.get('model') or 'none')} &middot; {manifest['seconds']:.1f} s</p>",
             _overview(manifest)]
    figures = []
    if sample is not None and "negative_scores" in sample.column_names:
        figures.append(score_histogram(sample))
    if sample is not None and "negative_km" in sample.column_names:
        figures.append(distance_histogram(sample))
    if sample is not None:
        figures.append(negatives_per_query(sample, manifest["config"]["mine"]["num_negatives"]))
    figures.append(removed_chart(f["removed"]))
    figures.append(stage_chart(manifest["stages"]))
    if miner in ("geographic", "mixed") and sample is not None:
        figures.append(place_map(manifest, sample, here))
    parts.append("<div class='figures'>" + "".join(fig for fig in figures if fig) + "</div>")
    parts.append(_stage_table(manifest["stages"]))
    if sample is not None:
        parts.append(sample_table(sample, miner))
    parts.append("</section>")
    return "\n".join(parts)


def _overview(manifest: dict) -> str:
    f = manifest["figures"]
    rows = [
        ["queries", f"{f['queries']:,}"],
        ["rows written", f"{f['rows']:,}"],
        ["negatives per query", f"{f['negatives_per_query']:.2f} ({f['short_queries']:,} queries short, "
                                f"{f['queries_without_negatives']:,} with none)"],
        ["candidates per query", _e(str(f.get("candidates_per_query")))],
        ["index recall", _recall_text(f.get("recall"), manifest)],
    ]
    if "negatives_equal_to_positive_text" in f:
        rows.append(["negatives equal to a positive's text", f"{f['negatives_equal_to_positive_text']:,}"])
    if f.get("scored_by"):
        rows.append(["scored by", _e(f["scored_by"])])
    if f.get("eval"):
        ev = f["eval"]
        recalls = ", ".join(f"recall@{k} {ev[f'recall@{k}']:.4f}" for k in eval_cutoffs(ev))
        rows.append(["held-out eval", f"{recalls}, nDCG@10 {ev['ndcg@10']:.4f} ({ev['queries']} {ev.get('of', 'queries')})"])
    if "together_share" in f:
        rows.append(["batches", f"{f['batches']:,}; {f['together_share']:.1%} of (anchor, negative) pairs share a batch"])
    for name, url in manifest["outputs"].items():
        rows.append([f"{_e(name)} output", f"<code>{_e(url)}</code>"])
    return _table(["", ""], rows, raw=True, cls="overview")


def _recall_text(recall: Optional[dict], manifest: dict) -> str:
    if recall:
        return f"recall@{recall['k']} {recall['recall']:.4f} against exact search on {recall['queries']:,} queries"
    if manifest.get("miner") == "geographic":
        return "exact (k-d tree or exact search over coordinates)"
    return "exact search (recall 1.0)"


# ---- figures ---------------------------------------------------------------------------------


def score_histogram(sample: pa.Table) -> str:
    """Positive and negative scores of the sampled rows, overlaid."""
    negatives = _flat(sample.column("negative_scores"))
    positives = _values(sample.column("positive_score")) if "positive_score" in sample.column_names else np.zeros(0)
    if not len(negatives) and not len(positives):
        return ""
    fig, ax = _figure()
    both = np.concatenate([positives, negatives])
    bins = np.linspace(float(both.min()), float(both.max()) + 1e-6, 40)
    if len(positives):
        ax.hist(positives, bins=bins, alpha=0.6, color=POSITIVE, label=f"positive ({len(positives):,})")
    ax.hist(negatives, bins=bins, alpha=0.6, color=NEGATIVE, label=f"negative ({len(negatives):,})")
    ax.set(xlabel="score", ylabel="count", title=f"Scores ({sample.num_rows:,} sampled rows)")
    ax.legend()
    return _img(fig, "positive and negative score histograms")


def distance_histogram(sample: pa.Table) -> str:
    """Great-circle distance from each place to its negatives (km)."""
    km = _flat(sample.column("negative_km"))
    if not len(km):
        return ""
    fig, ax = _figure()
    ax.hist(km, bins=40, color=NEGATIVE, alpha=0.8)
    ax.set(xlabel="distance to negative (km)", ylabel="count", title=f"Negative distance ({sample.num_rows:,} sampled places)")
    return _img(fig, "negative distance histogram")


def negatives_per_query(sample: pa.Table, num_negatives: int) -> str:
    """How many negatives each sampled row has (a bar at ``num_negatives`` when none fell short)."""
    counts = np.asarray(sample.column("negative_ids").combine_chunks().value_lengths().fill_null(0))
    fig, ax = _figure()
    values, freq = np.unique(counts, return_counts=True)
    ax.bar(values, freq, color="#7570b3")
    ax.set(xlabel="negatives", ylabel="rows", title=f"Negatives per row (asked {num_negatives})")
    ax.set_xticks(range(0, max(int(values.max()), num_negatives) + 1))
    return _img(fig, "negatives per query")


def removed_chart(removed: dict) -> str:
    """Candidates each filter removed (a mixed round: geographic and similarity rules side by side)."""
    flat = {}
    for name, value in removed.items():
        if isinstance(value, dict):
            flat.update({f"{name}: {inner}": count for inner, count in value.items()})
        else:
            flat[name] = value
    fig, ax = _figure()
    names = list(flat)
    ax.barh(names, [flat[name] for name in names], color="#e7298a")
    for y, name in enumerate(names):
        ax.text(flat[name], y, f" {flat[name]:,}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.locator_params(axis="x", nbins=4)
    ax.set_xlim(0, max(list(flat.values()) + [1]) * 1.25)
    ax.set(xlabel="candidates removed", title="What each filter removed")
    return _img(fig, "candidates removed by filter")


def stage_chart(stages: dict) -> str:
    """Seconds per stage."""
    fig, ax = _figure()
    names = list(stages)
    seconds = [stages[name]["seconds"] for name in names]
    ax.barh(names, seconds, color="#66a61e")
    for y, name in enumerate(names):
        ax.text(seconds[y], y, f" {stages[name]['rows_per_second']:,.0f} rows/s", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="seconds", title="Stage times")
    ax.set_xlim(0, max(seconds + [1e-3]) * 1.35)
    return _img(fig, "stage times")


def place_map(manifest: dict, sample: pa.Table, here: storage.Location) -> str:
    """Lat/lon of the places in the first few batches (one colour each); without batches, of a few
    places with their negatives (one colour per place)."""
    groups = _map_groups(manifest, sample, here)
    if not groups:
        return ""
    coords = place_coordinates(manifest["config"]["corpus"], [i for _, ids in groups for i in ids])
    fig, ax = _figure(5.5, 3.6)
    for label, ids in groups:
        points = [coords[i] for i in ids if i in coords]
        if points:
            lat, lon = np.array(points).T
            ax.scatter(lon, lat, s=14, label=label)
    what = "batches" if storage.is_committed(here.join("batches")) else "places and their negatives"
    ax.set(xlabel="longitude", ylabel="latitude", title=f"{len(groups)} {what}")
    ax.legend(fontsize=7, loc="best")
    return _img(fig, f"lat/lon of a few {what}")


def _map_groups(manifest: dict, sample: pa.Table, here: storage.Location) -> list[tuple[str, list[str]]]:
    if not storage.is_committed(here.join("batches")):
        rows = sample.slice(0, MAP_BATCHES).select(["query_id", "negative_ids"]).to_pylist()
        return [(_clip(str(r["query_id"])), [str(r["query_id"])] + [str(n) for n in r["negative_ids"] or []]) for r in rows]
    rows = read_sample(here.join("batches").url, ["batch_id", "query_id"], limit=4096)
    if rows is None or not rows.num_rows:
        return []
    batch_ids = np.asarray(rows.column("batch_id"))
    ids = [str(v) for v in rows.column("query_id").to_pylist()]
    return [(f"batch {int(batch)}", [ids[i] for i in np.flatnonzero(batch_ids == batch)])
            for batch in np.unique(batch_ids)[:MAP_BATCHES]]


def _clip(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def place_coordinates(corpus_cfg: dict, ids: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``id -> (lat, lon)`` for ``ids``, scanning the places corpus a batch at a time until all are found."""
    wanted, found = set(ids), {}
    columns = [corpus_cfg.get("id_column", "id"), corpus_cfg.get("lat_column", "lat"), corpus_cfg.get("lon_column", "lon")]
    for loc in storage.list_table_files(corpus_cfg["path"]):
        for batch in _file_batches(loc, columns):
            for key, lat, lon in zip(*(batch.column(c).to_pylist() for c in columns)):
                if str(key) in wanted:
                    found[str(key)] = (lat, lon)
            if len(found) == len(wanted):
                return found
    return found


# ---- the sample table ------------------------------------------------------------------------


def sample_table(sample: pa.Table, miner: str) -> str:
    """The first few rows: query, positive (with its score) and negatives (with score or km), texts shortened."""
    rows = []
    for row in _sample_rows(sample):
        negatives = row.get("negatives") or [None] * len(row.get("negative_ids") or [])
        ids = row.get("negative_ids") or []
        scores = row.get("negative_scores") or [None] * len(ids)
        kms = row.get("negative_km") or [None] * len(ids)
        items = "".join(
            f"<li>{_short(text if text is not None else ids[i])}<span class='score'>{_measure(scores[i], kms[i])}</span></li>"
            for i, text in enumerate(negatives))
        cells = [_short(row.get("query") or row.get("query_id"))]
        if miner == "similarity":
            cells.append(f"{_short(row.get('positive'))}<span class='score'>{_measure(row.get('positive_score'), None)}</span>")
        cells.append(f"<ol>{items}</ol>" if items else "<em>none</em>")
        rows.append(cells)
    head = ["query", "positive", "negatives"] if miner == "similarity" else ["place", "negatives"]
    return "<h3>Sample queries</h3>" + _table(head, rows, raw=True, cls="samples")


def _sample_rows(sample: pa.Table) -> list[dict]:
    """The first ``SAMPLE_QUERIES`` rows that have negatives (rows without any fill up when too few do)."""
    head = sample.slice(0, 50 * SAMPLE_QUERIES)
    counts = np.asarray(head.column("negative_ids").combine_chunks().value_lengths().fill_null(0))
    order = np.concatenate([np.flatnonzero(counts > 0), np.flatnonzero(counts == 0)])[:SAMPLE_QUERIES]
    return head.take(pa.array(np.sort(order), pa.int64())).to_pylist()


def _measure(score, km) -> str:
    parts = [f"{score:.3f}" if score is not None else "", f"{km:,.1f} km" if km is not None else ""]
    return " ".join(p for p in parts if p)


# ---- reading a bounded sample ----------------------------------------------------------------


def _sample_columns(miner: str) -> list[str]:
    if miner == "geographic":
        return ["query_id", "query", "negative_ids", "negatives", "negative_km"]
    if miner == "mixed":
        return ["query_id", "query", "negative_ids", "negatives", "negative_km", "negative_scores"]
    return ["query_id", "query", "positive", "positive_score", "negative_ids", "negatives", "negative_scores"]


def read_sample(path: str, columns: Sequence[str], limit: int = SAMPLE_ROWS) -> Optional[pa.Table]:
    """At most ``limit`` rows of the Parquet files under ``path`` (only ``columns`` that exist), read a batch at a time."""
    batches, rows = [], 0
    try:
        files = storage.list_table_files(path)
    except InputError:
        return None
    for loc in files:
        for batch in _file_batches(loc, columns, batch_size=min(limit, 4096)):
            batches.append(batch.slice(0, limit - rows))
            rows += batches[-1].num_rows
            if rows >= limit:
                return pa.Table.from_batches(batches)
    return pa.Table.from_batches(batches) if batches else None


def _file_batches(loc: storage.Location, columns: Sequence[str], batch_size: int = 4096) -> Iterable[pa.RecordBatch]:
    """Record batches of one Parquet file (or, for JSONL, of the whole file) with the ``columns`` it has."""
    import pyarrow.parquet as pq

    if not loc.path.endswith(".parquet"):
        yield from storage.read_table_file(loc, columns).to_batches(batch_size)
        return
    with loc.fs.open(loc.path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        present = [c for c in columns if c in parquet.schema_arrow.names]
        yield from parquet.iter_batches(batch_size=batch_size, columns=present)


def _flat(column: pa.ChunkedArray) -> np.ndarray:
    values = column.combine_chunks().flatten()
    return np.asarray(values.drop_null(), dtype=np.float64) if len(values) else np.zeros(0)


def _values(column: pa.ChunkedArray) -> np.ndarray:
    values = np.asarray(column.drop_null(), dtype=np.float64)
    return values[~np.isnan(values)]


# ---- HTML and matplotlib plumbing ------------------------------------------------------------


def _figure(width: float = 4.6, height: float = 3.0):
    # The object-oriented API on an Agg canvas: no pyplot state, no GUI backend, thread-safe for a server.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _img(fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<figure><img alt='{_e(alt)}' src='data:image/png;base64,{data}'></figure>"


def _table(head: Sequence[str], rows: Sequence[Sequence], raw: bool = False, cls: str = "") -> str:
    cell = (lambda v: str(v)) if raw else (lambda v: _e(str(v)))
    header = "" if not any(head) else "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'>{header}{body}</table>"


def _stage_table(stages: dict) -> str:
    rows = [[name, f"{s['seconds']:.2f}", f"{s['rows']:,}", f"{s['rows_per_second']:,.0f}"] for name, s in stages.items()]
    return "<h3>Stages</h3>" + _table(["stage", "seconds", "rows", "rows/s"], rows, cls="stages")


def _short(text, limit: int = TEXT_CHARS) -> str:
    if text is None:
        return "<em>-</em>"
    text = " ".join(str(text).split())
    return _e(text if len(text) <= limit else text[: limit - 1] + "\u2026")


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ border-bottom: 1px solid #ccc; margin-top: 1.6em; }}
.meta {{ color: #666; font-size: 0.9em; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 0.5em; }} figure {{ margin: 0; }}
table {{ border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }}
td, th {{ border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }}
table.overview td:first-child {{ color: #555; white-space: nowrap; }}
table.samples td {{ max-width: 28em; }} table.samples ol {{ margin: 0; padding-left: 1.3em; }}
.score {{ color: #888; margin-left: 0.5em; font-variant-numeric: tabular-nums; }}
</style></head>
<body>
{body}
</body></html>
"""
