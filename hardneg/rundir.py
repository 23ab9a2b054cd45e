"""The run directory's layout and the one manifest every round commits, whatever its miner.

::

    RUN_DIR/run.yaml                      the resolved config of the first run; runs with other options are refused
                                          (``door.check_same_options``) unless they ask for a new round
    RUN_DIR/source/, RUN_DIR/models/      what hardneg.mine_hard_negatives was given: pairs and corpus as Parquet,
                                          model objects saved by content hash (``hardneg.api``; models/ sits in
                                          cache_folder when the API chose the run directory)
    RUN_DIR/inputs/{corpus,queries}/      prepared once, reused by every round (a part per input file; pairs
                                          input: queries a part per anchor bucket)
    RUN_DIR/inputs/pairs-staging/         pairs input only, while it is prepared: its pairs bucketed by anchor
                                          (removed once the queries are written; never committed)
    RUN_DIR/rounds/NNNNN/places/          a round over places: its places, checked and written a corpus file at a
                                          time (``place_shards.write_places``), parts of index.query_batch_size rows
    RUN_DIR/rounds/NNNNN/places-staging/  the training loop's round over places, while its places are split into
                                          places/ and heldout/places/ (never committed)
    RUN_DIR/rounds/NNNNN/embeddings/      corpus embeddings (embed stage)
    RUN_DIR/rounds/NNNNN/query_embeddings/
    RUN_DIR/rounds/NNNNN/index/           the persisted index, one file a shard (``hardneg.pipelines.index``)
    RUN_DIR/rounds/NNNNN/mined/           the mined table (DESIGN.md schema)
    RUN_DIR/rounds/NNNNN/<view>/          the mine.format view (``-scores`` with scores), when asked; a later
                                          run may add another view to a committed round
    RUN_DIR/rounds/NNNNN/batches/         mine.batches: rows with batch_id (geographic and mixed miners)
    RUN_DIR/rounds/NNNNN/heldout/         a cross-view places round's held-out places and both their views' embeddings
    RUN_DIR/rounds/NNNNN/eval/            held-out recall@k / nDCG@10 of the round's encoder (training loop only)
    RUN_DIR/rounds/NNNNN/MANIFEST.json    written last: the round exists once it does

Example::

    here = round_dir("runs/a", 0)
    manifest = commit_round(here, RoundManifest(miner="similarity", round=0, encoder="base", ...))
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from hardneg import storage


def round_dir(run_dir: str, round_index: int) -> storage.Location:
    """``RUN_DIR/rounds/NNNNN``."""
    return storage.resolve(run_dir).join("rounds", f"{round_index:05d}")


def committed_children(parent: storage.Location) -> list[tuple[int, storage.Location]]:
    """``(number, location)`` of the committed ``NNNNN`` folders of ``parent``, by number."""
    if not parent.fs.exists(parent.path):
        return []
    found = []
    for path in parent.fs.ls(parent.path, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        here = parent.join(name)
        if name.isdigit() and storage.is_committed(here):
            found.append((int(name), here))
    return sorted(found, key=lambda item: item[0])


def new_round(run_dir: str) -> int:
    """The index after the newest committed round (0 in a new run); what that folder holds uncommitted is cleared,
    so the new round starts clean rather than resuming stages made with other options."""
    rounds = committed_children(storage.resolve(run_dir).join("rounds"))
    index = rounds[-1][0] + 1 if rounds else 0
    here = round_dir(run_dir, index)
    if here.fs.exists(here.path):
        here.fs.rm(here.path, recursive=True)
    return index


def stage_timing(started: float, rows: int) -> dict:
    """``seconds``, ``rows`` and ``rows_per_second`` of a stage that began at ``started`` (perf_counter)."""
    return timing(time.perf_counter() - started, rows)


def timing(seconds: float, rows: int) -> dict:
    """``seconds``, ``rows`` and ``rows_per_second`` of a stage that took ``seconds``."""
    return {"seconds": round(seconds, 3), "rows": int(rows), "rows_per_second": round(rows / max(seconds, 1e-9), 1)}


@dataclass
class RoundManifest:
    """``rounds/NNNNN/MANIFEST.json``, the same fields for every miner.

    Attributes:
        miner: ``similarity`` | ``geographic`` | ``mixed``.
        model, model_hash: the encoder's directory and hash (None for the geographic miner: no model).
        inputs: the input paths the round read.
        counts: ``corpus``, ``queries`` and written ``rows``.
        stages: per stage ``seconds``, ``rows``, ``rows_per_second``, in the order they ran.
        figures: the miner's figures (``hardneg.pipelines.figures``).
        outputs: output name -> folder URL (``mined``, a view, ``batches``).
        heldout: the held-out split (training loop rounds only).
    """

    miner: str
    round: int
    encoder: str
    model: Optional[str]
    inputs: dict
    config: dict
    counts: dict
    stages: dict
    figures: dict
    outputs: dict
    model_hash: Optional[str] = None
    heldout: Optional[dict] = None
    kind: str = "round"
    seconds: float = field(init=False, default=0.0)

    def to_dict(self) -> dict:
        self.seconds = round(sum(stage["seconds"] for stage in self.stages.values()), 3)
        return asdict(self)


def commit_round(here: storage.Location, manifest: RoundManifest) -> dict:
    """Commit the round folder ``here`` with ``manifest`` (its ``seconds`` the sum of the stages); returns it as a dict."""
    body = manifest.to_dict()
    storage.commit(here, body)
    return body
