"""Typed run configuration: YAML in (``safe_load``), validated, one error per bad field.

Every section is a pydantic model that forbids unknown keys. ``load_config`` reads a
YAML file, applies ``section.key=value`` overrides (the CLI's flags end up here) and
raises one ``ConfigError`` listing every bad field by its dotted path, with the
allowed values where there is a fixed set.

Example::

    cfg = load_config("examples/quickstart.yaml", {"mine.num_negatives": 5})
    cfg.mine.num_negatives  # 5
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hardneg.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are re-validated on assignment,
    and no float may be NaN or infinite (a NaN threshold would switch its filter off without a word)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


class StorageConfig(Section):
    """Where ``s3://`` paths go. Credentials come only from the standard AWS chain."""

    endpoint_url: Optional[str] = Field(None, description="S3 endpoint for MinIO, moto or on-prem stores.")
    region: Optional[str] = Field(None, description="S3 region; the AWS chain's default when unset.")
    lease_ttl: float = Field(
        60.0, ge=1, description="Seconds a run directory's lock (RUN_DIR/LOCK.json) outlives its holder's last "
        "heartbeat; after that another writer may take it over. The holder renews it every ttl/4."
    )


class CorpusConfig(Section):
    """The corpus: one table (Parquet or JSONL, a file, a folder or a glob; local or s3://)."""

    path: Optional[str] = None
    id_column: str = "id"
    text_column: str = "text"
    image_column: str = Field("image", description="Images, read when the corpus has no text_column: per row a file path, a URL "
                              "(s3://) or the encoded image (Parquet binary). Decoded and preprocessed with the model's "
                              "AutoImageProcessor in Ray Data CPU tasks; a cross-view corpus's view_column then holds images too.")
    lat_column: str = "lat"
    lon_column: str = "lon"
    group_column: str = "group"
    view_column: str = Field("view", description="Places: the place's second view (cross-view pairs, as in Sample4Geo: the "
                             "aerial image for a ground one, a name in another script). When the column is there it is each "
                             "row's positive, and the negatives are the other places' views.")
    view_image_column: str = Field("view_image", description="Places whose first view is text: a second view of images "
                                   "(paths, URLs or bytes) when the file has no view_column: a text -> image cross-view "
                                   "corpus (a place's name or caption against its photo), embedded by a dual text+image "
                                   "(CLIP-style) model, texts through its text tower and the views through its vision tower.")
    drop_invalid: bool = Field(False, description="Drop invalid rows (and count them) instead of failing.")


class QueriesConfig(Section):
    """Queries with their positives: either (a) pairs of texts or (b) ids into the corpus."""

    path: Optional[str] = None
    format: Literal["pairs", "queries"] = "pairs"
    anchor_column: str = "anchor"
    positive_column: str = "positive"
    anchor_image_column: str = Field("anchor_image", description="queries.format=pairs: a file with this column and no "
                                     "anchor_column asks with images (paths, URLs or bytes), embedded by a vision or dual model.")
    positive_image_column: str = Field("positive_image", description="queries.format=pairs: a file with this column and no "
                                       "positive_column has images as positives, so the corpus is images (an image is one item "
                                       "by its path, URL or bytes, as a text is by its text).")
    query_id_column: str = "query_id"
    query_column: str = "query"
    query_image_column: str = Field("query_image", description="queries.format=queries: a file with this column and no "
                                    "query_column asks with images (paths, URLs or bytes), embedded by a vision or dual model.")
    positive_ids_column: str = "positive_ids"


class ModelConfig(Section):
    """The encoder: a local transformers / sentence-transformers directory or checkpoint."""

    path: Optional[str] = Field(None, description="Model directory; the packaged all-MiniLM-L6-v2 when unset.")
    max_length: Optional[int] = Field(None, ge=8, le=32768, description="Token limit; the model's own when unset.")
    pooling: Optional[Literal["mean", "cls", "max", "lasttoken"]] = Field(
        None, description="Pooling; read from the model's sentence-transformers config when unset."
    )
    normalize: bool = True
    query_prompt: str = Field("", description="Text prepended to every query before embedding.")
    corpus_prompt: str = Field("", description="Text prepended to every corpus text before embedding.")
    trust_remote_code: bool = False


class EmbedConfig(Section):
    """The embedding stage: Ray Data tokenize tasks feeding a pool of Encoder actors."""

    batch_size: int = Field(64, ge=1, description="Texts per forward pass.")
    block_size: int = Field(2048, ge=1, description="Texts per tokenize task; length-sorted inside.")
    image_block_size: int = Field(256, ge=1, description="Images per decode task (a corpus of images): its pixels, "
                                  "about 0.6 MB an image at 224 x 224, travel to the Encoder actors as one block.")
    part_rows: int = Field(1_000_000, ge=1, description="Rows per committed part: a re-run after a crash redoes only unfinished parts.")
    dtype: Literal["float16", "float32"] = Field("float32", description="Stored embedding dtype.")
    num_actors: Optional[int] = Field(None, ge=1, description="Encoder actors; one per GPU, or 1 on CPU, when unset.")
    gpus_per_actor: Optional[float] = Field(None, ge=0, description="0 on CPU; 1 when the cluster has GPUs.")
    cpus_per_actor: Optional[float] = Field(None, gt=0, description="CPUs (and torch threads) per actor.")
    autocast: Literal["bfloat16", "float16", "none"] = Field("bfloat16", description="Autocast dtype on GPU.")
    corpus_embeddings: Optional[str] = Field(
        None, description="Bring your own embeddings: a folder of Parquet id + embedding (what `hardneg embed` writes) "
        "holding every corpus id; the corpus is not embedded."
    )
    query_embeddings: Optional[str] = Field(
        None, description="With corpus_embeddings: the queries' vectors (id = query_id); unset, the model embeds the queries."
    )


class IndexConfig(Section):
    """The search backend over the corpus embeddings."""

    backend: Literal["exact", "flat", "ivf", "ivfpq", "hnsw", "kdtree"] = Field(
        "exact", description="exact: torch chunked matmul; flat/ivf/ivfpq/hnsw: faiss; kdtree: scipy, for 3-D geographic vectors."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    chunk_size: int = Field(65536, ge=1, description="Corpus rows per matmul chunk of the exact backend.")
    query_batch_size: int = Field(4096, ge=1, description="Queries searched at once.")
    num_shards: int = Field(1, ge=1, description="Corpus shards, each held by a Ray actor; 1 searches in-process.")
    nlist: Optional[int] = Field(None, ge=1, description="IVF lists; about 4*sqrt(N) when unset.")
    nprobe: int = Field(16, ge=1)
    pq_m: int = Field(16, ge=1, description="IVF-PQ sub-quantizers; must divide the dimension.")
    pq_bits: int = Field(8, ge=1, le=16)
    hnsw_m: int = Field(32, ge=2)
    ef_construction: int = Field(200, ge=1)
    ef_search: int = Field(128, ge=1)
    recall_sample: int = Field(1000, ge=0, description="Queries checked against exact search for recall@k.")


class MineConfig(Section):
    """The miners. Names follow sentence-transformers' ``mine_hard_negatives`` where the meaning is the same."""

    miner: Literal["similarity", "geographic", "mixed"] = "similarity"
    num_negatives: int = Field(3, ge=1)
    range_min: int = Field(0, ge=0, description="Skip the first range_min candidates.")
    range_max: Optional[int] = Field(
        None, ge=1, description="Consider candidates up to this rank. Unset: as sentence-transformers, range_min + num_negatives + "
        "max_positives, or range_min + 10*num_negatives + max_positives with a margin, max_score (or min_score with a cross-encoder)."
    )
    max_score: Optional[float] = None
    min_score: Optional[float] = None
    absolute_margin: Optional[float] = Field(None, description="Keep a negative only if score < positive_score - margin.")
    relative_margin: Optional[float] = Field(
        None, ge=0, lt=1, description="Keep a negative only if score < positive_score * (1 - margin)."
    )
    sampling_strategy: Literal["top", "random", "weighted"] = "top"
    weighted_temperature: float = Field(0.05, gt=0, description="Softmax temperature of weighted sampling.")
    exclude_duplicate_texts: bool = Field(True, description="Drop candidates whose text equals a positive's, the query's or a higher candidate's.")
    include_positives: bool = Field(
        False, description="Keep the query's positives among the candidates (a full ranking, for reranker evaluation sets); needs format n-tuple."
    )
    on_short: Literal["keep", "drop"] = Field("keep", description="Queries with fewer negatives than asked.")
    cross_encoder: Optional[str] = Field(None, description="Cross-encoder model dir to rescore candidates.")
    cross_encoder_batch_size: int = Field(32, ge=1)
    cross_encoder_actors: Optional[int] = Field(
        None, ge=0, description="Cross-encoder actors the MineActors send their candidates to (one model each, one GPU "
        "each on a GPU cluster). Unset: one per GPU, or none on a cluster without GPUs; 0: each MineActor loads the "
        "cross-encoder itself.")
    # geographic
    min_km: float = Field(0.0, ge=0, description="Items closer than this are the same place, never negatives.")
    max_km: float = Field(20037.6, gt=0, description="Negatives lie no farther than this.")
    geo_negatives: Optional[int] = Field(None, ge=0, description="Mixed mode: how many negatives the geographic miner gives.")
    # output
    format: Literal["default", "triplet", "n-tuple", "n-tuple-scores", "labeled-pair", "labeled-list"] = Field(
        "default", description="Also write this sentence-transformers view of the mined table (hardneg.pipelines.views)."
    )
    output_scores: bool = Field(False, description="Add the scores to the view, as mine_hard_negatives' output_scores.")
    batches: bool = Field(False, description="Compose batches so each anchor's negatives share its batch.")
    composed_batch_size: int = Field(32, ge=2, description="Rows per composed batch (--batches); not the encoding batch size (embed.batch_size).")
    near_neighbours: Optional[int] = Field(
        None, ge=0, description="Composed batches, Sample4Geo's sampler: a batch takes its anchor's near_neighbours nearest "
        "mined neighbours plus random_neighbours drawn from the rest (num_negatives is the pool, e.g. 128 with 32 + 32). "
        "Unset: every neighbour, and theirs (two hops).")
    random_neighbours: int = Field(0, ge=0, description="Composed batches: neighbours drawn at random from the pool past near_neighbours.")
    seed: int = 12

    @model_validator(mode="after")
    def _ranges(self) -> "MineConfig":
        if self.range_max is not None and self.range_max <= self.range_min:
            raise ValueError(f"range_min must be smaller than range_max, got range_min={self.range_min} and range_max={self.range_max}")
        if self.max_km <= self.min_km:
            raise ValueError(f"max_km ({self.max_km}) must be greater than min_km ({self.min_km})")
        if self.miner == "mixed" and (self.geo_negatives is None or self.geo_negatives > self.num_negatives):
            raise ValueError(f"miner=mixed needs geo_negatives in [0, num_negatives={self.num_negatives}], got {self.geo_negatives}")
        if self.range_max is not None and self.range_max - self.range_min < self.num_negatives:
            raise ValueError(
                f"Cannot mine {self.num_negatives} negatives per query: only {self.range_max - self.range_min} candidates remain after "
                f"skipping the first range_min={self.range_min} of range_max={self.range_max}"
            )
        if self.include_positives and self.format not in ("n-tuple", "n-tuple-scores"):
            raise ValueError(f"include_positives keeps the ranking order only in format n-tuple or n-tuple-scores, got format={self.format}")
        if self.miner != "similarity" and self.sampling_strategy == "weighted":
            raise ValueError(f"sampling_strategy=weighted needs scores; miner={self.miner} takes top or random")
        return self

    def window_end(self, max_positives: int) -> int:
        """``range_max``, or sentence-transformers' default for it: ``range_min + num_negatives + max_positives``,
        with ``10 * num_negatives`` when a filter may remove candidates (a margin, ``max_score``, or ``min_score``
        with a cross-encoder). Search fetches ``window_end + max_positives`` neighbours, as ST does."""
        if self.range_max is not None:
            return self.range_max
        filtered = (self.absolute_margin is not None or self.relative_margin is not None or self.max_score is not None
                    or (self.cross_encoder is not None and self.min_score is not None))
        return self.range_min + self.num_negatives * (10 if filtered else 1) + max_positives

    def candidate_depth(self) -> int:
        """Neighbours the geographic and mixed miners fetch: range_max, or enough to survive their place filters."""
        if self.range_max is not None:
            return self.range_max
        return self.range_min + self.num_negatives * 10 + 10

    def view_scores(self) -> bool:
        """Whether the view carries scores (``output_scores``, or the ``n-tuple-scores`` format)."""
        return self.output_scores or self.format == "n-tuple-scores"

    def view_name(self) -> str:
        """The view's folder in the round: the format, with ``-scores`` when it carries scores."""
        if self.format in ("default", "n-tuple-scores") or not self.output_scores:
            return self.format
        return f"{self.format}-scores"


class TrainConfig(Section):
    """The trainer and the re-mining loop."""

    epochs: int = Field(2, ge=1)
    remine_every: int = Field(1, ge=0, description="Re-mine every N epochs; 0 never re-mines.")
    gps_epochs: int = Field(
        0, ge=0, description="Places (mine.miner geographic): the first N epochs train on GPS rounds; a round whose "
        "block starts at epoch N or later is mined by embedding similarity over the places with the newest checkpoint "
        "(Sample4Geo's dynamic similarity sampling: the mixed miner with geo_negatives 0). 0: every round uses mine.miner."
    )
    asynchronous: bool = Field(False, description="Re-mine on spare actors while training continues.")
    batch_size: int = Field(32, ge=2)
    learning_rate: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(0.05, gt=0)
    learnable_scale: bool = False
    symmetric: bool = False
    view_weights: Literal["shared", "separate"] = Field(
        "shared", description="Cross-view rows (a places corpus with a view column): shared, one encoder embeds both "
        "views (Sample4Geo); separate, the second view (the rows' positives and negatives) has its own encoder, "
        "started from the same weights and saved in the checkpoint's view/ folder, which the next rounds embed "
        "the second views with."
    )
    negatives_per_row: int = Field(1, ge=0, description="Mined negatives used per row in the loss.")
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: Optional[float] = Field(
        None, gt=0, description="CPUs each training worker reserves; Ray's default (1) when unset. Lower it so an "
        "asynchronous re-mine finds CPUs for its Encoder actor and tokenizer tasks on a small machine."
    )
    max_steps_per_epoch: Optional[int] = Field(None, ge=1)
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Held-out share of the queries (or of a cross-view "
                                 "places corpus's places) for evaluation; the loop's rounds never mine or train on them.")
    eval_k: int = Field(10, ge=1)
    seed: int = 12


class RayConfig(Section):
    """How to reach Ray. Unset address: RAY_ADDRESS when set, else a local instance, or none at all for a
    laptop-sized round (``in_process``)."""

    address: Optional[str] = None
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of a local instance.")
    object_store_memory: Optional[int] = Field(None, ge=78643200)
    in_process: Literal["auto", "always", "never"] = Field(
        "auto", description="Run a round's stages in this process, without Ray: 'auto' does it when no cluster is named "
        "(address, RAY_ADDRESS), Ray is not already running here and the inputs hold at most in_process_max_bytes; "
        "Ray's start and its workers cost more than they save there.")
    in_process_max_bytes: int = Field(32 * 2**20, ge=0, description="Input files (queries and corpus) up to this many "
                                      "bytes in all run in process under in_process: auto.")


class RunConfig(Section):
    """A whole run: embed -> index -> mine (-> train -> re-mine) into ``run_dir``."""

    run_dir: Optional[str] = None
    corpus: CorpusConfig = CorpusConfig()
    queries: QueriesConfig = QueriesConfig()
    model: ModelConfig = ModelConfig()
    embed: EmbedConfig = EmbedConfig()
    index: IndexConfig = IndexConfig()
    mine: MineConfig = MineConfig()
    train: TrainConfig = TrainConfig()
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _schedule(self) -> "RunConfig":
        if self.train.gps_epochs and self.mine.miner != "geographic":
            raise ValueError(f"train.gps_epochs needs mine.miner geographic (GPS rounds first), got {self.mine.miner}")
        return self


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key; allowed keys: {_allowed_keys(item['loc'])}")
        else:
            got = item.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {path}: {item['msg']}{shown}")
    return f"invalid config {source}:\n" + "\n".join(lines)


def _allowed_keys(loc: tuple) -> str:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            break
        model = field.annotation
    return ", ".join(model.model_fields)


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted='a.b'``, creating sections as needed."""
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"invalid config override {dotted}: {part} is not a section")
        node = child
    node[leaf] = value


# Keys that were renamed: the old name is refused with the new one, never silently ignored.
RENAMED_KEYS = {
    "mine.batch_size": "mine.composed_batch_size (rows per composed batch); the encoding batch size is embed.batch_size",
}


def _refuse_renamed(data: dict, source: str) -> None:
    for dotted, instead in RENAMED_KEYS.items():
        section, key = dotted.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            raise ConfigError(f"invalid config {source}:\n  {dotted}: renamed; use {instead}")


def parse_config(data: dict, source: str = "(dict)", overrides: Optional[dict] = None) -> RunConfig:
    """Validate a config mapping (plus dotted overrides) into a ``RunConfig``."""
    data = dict(data or {})
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
    _refuse_renamed(data, source)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: Optional[str] = None, overrides: Optional[dict] = None) -> RunConfig:
    """Read a YAML config (local or s3://) with ``yaml.safe_load`` and validate it.

    Args:
        path: the YAML file; ``None`` starts from the defaults.
        overrides: ``{"mine.num_negatives": 5, ...}``; ``None`` values are ignored.
    """
    data: dict = {}
    if path is not None:
        from hardneg import storage

        try:
            text = storage.read_text(path)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return parse_config(data, source=str(path) if path else "(defaults)", overrides=overrides)


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what ``run.yaml`` holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
