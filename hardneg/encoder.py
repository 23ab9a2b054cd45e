"""The bi-encoder: a transformers ``AutoModel`` plus the pooling its sentence-transformers config declares;
texts, images (vision models) or both (CLIP-style dual models).

One implementation serves the embed pipeline and the trainer, so a checkpoint
embeds exactly as it trained. Loading never touches a model hub
(``local_files_only``) and never runs remote code unless asked.

Example::

    enc = Encoder.load(default_model_path())
    vectors = enc.encode(["a cat", "a dog"])   # float32, L2-normalised, (2, 384)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from hardneg.errors import ConfigError
from hardneg.images import ImageValue, image_processor, preprocess_images
from hardneg.model_dir import IMAGE_PROCESSOR_FILE, TOKENIZER_FILES, config_dim, default_model_path

POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class PoolingSpec:
    """What sentence-transformers' modules.json says about a model directory."""

    pooling: str
    normalize: bool
    max_seq_length: Optional[int]


def read_pooling_spec(model_path: str) -> PoolingSpec:
    """Pooling, normalisation and max length from a sentence-transformers directory; mean pooling otherwise."""
    pooling, normalize, max_len = "mean", False, None
    modules_file = os.path.join(model_path, "modules.json")
    if os.path.exists(modules_file):
        with open(modules_file) as handle:
            modules = json.load(handle)
        for module in modules:
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                with open(os.path.join(model_path, module.get("path", ""), "config.json")) as handle:
                    pool_cfg = json.load(handle)
                pooling = next((name for key, name in POOLING_KEYS.items() if pool_cfg.get(key)), "mean")
            elif kind.endswith("Normalize"):
                normalize = True
    bert_cfg = os.path.join(model_path, "sentence_bert_config.json")
    if os.path.exists(bert_cfg):
        with open(bert_cfg) as handle:
            max_len = json.load(handle).get("max_seq_length")
    return PoolingSpec(pooling, normalize, max_len)


def max_text_tokens(model_path: str, max_length: Optional[int] = None) -> int:
    """The tokens a text is cut to: ``max_length`` (``model.max_length``), else the sentence-transformers
    config's ``max_seq_length``, else the tokenizer's ``model_max_length`` (where sentence-transformers 6
    saves it: its ``sentence_bert_config.json`` has none), at most 512. What ``SentenceTransformer`` cuts to."""
    if max_length:
        return max_length
    spec = read_pooling_spec(model_path)
    if spec.max_seq_length:
        return spec.max_seq_length
    tokenizer_config = os.path.join(model_path, "tokenizer_config.json")
    if os.path.exists(tokenizer_config):
        with open(tokenizer_config) as handle:
            limit = json.load(handle).get("model_max_length")
        if isinstance(limit, (int, float)) and 0 < limit < 512:
            return int(limit)
    return 512


def model_fingerprint(model_path: str) -> str:
    """A short content hash of a model directory's config and weights (identifies a checkpoint)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(model_path)):
        full = os.path.join(model_path, name)
        if os.path.isfile(full) and name.endswith((".json", ".safetensors", ".bin", ".txt")):
            digest.update(name.encode())
            with open(full, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states ``(B, T, H)`` with attention mask ``(B, T)`` into ``(B, H)``."""
    if pooling == "cls":
        return hidden[:, 0]
    maskf = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        return (hidden * maskf).sum(1) / maskf.sum(1).clamp(min=1e-9)
    if pooling == "max":
        return hidden.masked_fill(maskf == 0, torch.finfo(hidden.dtype).min).max(1).values
    if pooling == "lasttoken":
        last = mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ConfigError(f"model.pooling: unknown pooling {pooling!r}; allowed: mean, cls, max, lasttoken")


def pad_batch(token_lists: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists to the longest: ``(input_ids, attention_mask)``."""
    longest = max(len(ids) for ids in token_lists)
    input_ids = np.full((len(token_lists), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_lists), longest), dtype=np.int64)
    for row, ids in enumerate(token_lists):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return torch.from_numpy(input_ids), torch.from_numpy(mask)


def image_pool(output) -> torch.Tensor:
    """A vision model's vector per image: ``pooler_output`` when the model has one (ViT: its dense + tanh
    over the CLS token; ConvNeXt: the normed global average), else the mean of ``last_hidden_state`` over
    its tokens ``(B, T, H)`` or its grid ``(B, C, H, W)``."""
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1)
    hidden = output.last_hidden_state
    return hidden.mean(dim=(2, 3)) if hidden.dim() == 4 else hidden.mean(dim=1)


def _features(output) -> torch.Tensor:
    """``get_text_features`` / ``get_image_features`` return a tensor, or (transformers 5) an output whose
    ``pooler_output`` is the projected vector."""
    return output if torch.is_tensor(output) else output.pooler_output


class Encoder(torch.nn.Module):
    """AutoModel + pooling (+ optional L2 normalisation): texts, token ids or images in, vectors out.

    Three kinds of model directory load, told apart by what they hold:

    - a text model (a tokenizer): ``last_hidden_state`` pooled as its sentence-transformers config says;
    - a vision model (an image processor, ``preprocessor_config.json``; ViT, ConvNeXt, a CLIP or SigLIP
      vision tower): ``image_pool``;
    - a dual text+image model (both, and ``get_text_features`` / ``get_image_features``: CLIP, SigLIP):
      texts and images land in one space, so a text query finds images.

    One encoder embeds both views of a cross-view place (shared weights, as Sample4Geo trains).
    """

    def __init__(self, model, tokenizer, pooling: str, normalize: bool, max_length: int, image_processor=None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.image_processor = image_processor

    @classmethod
    def load(
        cls,
        path: Optional[str] = None,
        pooling: Optional[str] = None,
        normalize: Optional[bool] = None,
        max_length: Optional[int] = None,
        trust_remote_code: bool = False,
        device: str = "cpu",
    ) -> "Encoder":
        """Load a local model directory; unset options come from its sentence-transformers config.

        Without one, a text model is not normalised and a model that embeds images is (its vectors are
        compared by cosine, as CLIP's are).
        """
        from transformers import AutoModel, AutoTokenizer

        path = path or default_model_path()
        if not os.path.isdir(path):
            raise ConfigError(f"model.path: {path} is not a local model directory")
        spec = read_pooling_spec(path)
        names = set(os.listdir(path))
        tokenizer = None
        if names & set(TOKENIZER_FILES):
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        processor = image_processor(path, trust_remote_code) if IMAGE_PROCESSOR_FILE in names else None
        model = AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        limit = max_text_tokens(path, max_length)
        if normalize is None:
            normalize = spec.normalize if "modules.json" in names else processor is not None
        return cls(model.to(device).eval(), tokenizer, pooling or spec.pooling, normalize, limit, processor)

    @property
    def is_dual(self) -> bool:
        """A CLIP-style model: texts through ``get_text_features``, images through ``get_image_features``."""
        return hasattr(self.model, "get_text_features") and hasattr(self.model, "get_image_features")

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated to ``max_length``, unpadded."""
        if self.tokenizer is None:
            raise ConfigError("model.path: a vision model embeds images, not texts (it has no tokenizer)")
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False)["input_ids"]

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                pixel_values: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Vectors of a padded token batch, or (``pixel_values``) of a preprocessed image batch."""
        if pixel_values is not None:
            vectors = _features(self.model.get_image_features(pixel_values=pixel_values)) if self.is_dual \
                else image_pool(self.model(pixel_values=pixel_values))
        elif self.is_dual:
            vectors = _features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            vectors = pool(hidden, attention_mask, self.pooling)
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return vectors

    @torch.inference_mode()
    def encode_tokens(self, token_lists: Sequence[Sequence[int]], batch_size: int = 64, autocast: Optional[torch.dtype] = None) -> np.ndarray:
        """Embed token id lists in length-sorted batches; rows come back in input order."""
        device = next(self.model.parameters()).device
        order = np.argsort([-len(ids) for ids in token_lists], kind="stable")
        out = np.empty((len(token_lists), self.dim), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, mask = pad_batch([token_lists[i] for i in rows], pad_id)
            input_ids, mask = input_ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                vectors = self(input_ids, mask)
            out[rows] = vectors.float().cpu().numpy()
        return out

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray, batch_size: int = 64, autocast: Optional[torch.dtype] = None) -> np.ndarray:
        """Embed preprocessed images ``(n, channels, height, width)`` in batches (float32, input order)."""
        device = next(self.model.parameters()).device
        out = np.empty((len(pixels), self.dim), dtype=np.float32)
        for start in range(0, len(pixels), batch_size):
            # Arrow hands read-only buffers: copied only when not already contiguous and writable (torch needs both).
            batch = torch.from_numpy(np.require(pixels[start : start + batch_size], requirements=["C", "W"])).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                out[start : start + batch_size] = self(pixel_values=batch).float().cpu().numpy()
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts (float32, in input order)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_tokens(self.tokenize(texts), batch_size=batch_size)

    def encode_images(self, images: Sequence[ImageValue], batch_size: int = 64) -> np.ndarray:
        """Embed images given as paths, URLs or bytes (float32, in input order).

        Example::

            Encoder.load("/models/vit-tiny").encode_images(["tiles/0.png", "tiles/1.png"])   # (2, dim)
        """
        if self.image_processor is None:
            raise ConfigError("model.path: this model embeds texts only (it has no image processor, preprocessor_config.json)")
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_pixels(preprocess_images(images, self.image_processor), batch_size=batch_size)

    @property
    def dim(self) -> int:
        return config_dim(self.model.config.to_dict())

    def save(self, path: str) -> None:
        """Save weights, tokenizer and/or image processor and a sentence-transformers pooling config (loadable by
        transformers' AutoModel, ``Encoder.load`` and, for text models, sentence-transformers)."""
        os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(path)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            os.makedirs(os.path.join(path, "2_Normalize"), exist_ok=True)
        pooling_cfg = {"word_embedding_dimension": self.dim}
        pooling_cfg.update({key: name == self.pooling for key, name in POOLING_KEYS.items()})
        with open(os.path.join(path, "modules.json"), "w") as handle:
            json.dump(modules, handle, indent=2)
        with open(os.path.join(path, "1_Pooling", "config.json"), "w") as handle:
            json.dump(pooling_cfg, handle, indent=2)
        with open(os.path.join(path, "sentence_bert_config.json"), "w") as handle:
            json.dump({"max_seq_length": self.max_length, "do_lower_case": False}, handle)
