"""Image values: read one (a local path, an ``s3://`` URL or raw bytes), check it at the door, preprocess it.

An image column (``corpus.image_column``) holds, per row, a file path (relative paths are read from the
working directory), a URL any ``storage.resolve`` understands, or the encoded image itself (a Parquet
binary column). The door (``image_problems``) opens every value with PIL and verifies it, which reads
the header and, for PNG, checks the chunks without decoding the pixels; ``preprocess_images`` decodes and
runs the model's ``AutoImageProcessor`` in a Ray Data CPU task, so Encoder actors get ready tensors.

Example::

    image_problems(pa.array(["tiles/0.png", "missing.png"]))   # ['', 'no such file missing.png']
    preprocess_images(["tiles/0.png"], image_processor(model_dir))   # float32 (1, 3, 32, 32)
"""

from __future__ import annotations

import io
from typing import Any, Sequence, Union

import numpy as np
import pyarrow as pa

from hardneg import storage

ImageValue = Union[str, bytes]

_processors: dict[tuple, Any] = {}


def is_image_column(values: pa.ChunkedArray | pa.Array) -> bool:
    """Whether a column holds images as bytes (Parquet binary), not as paths."""
    return pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)


def image_bytes(value: ImageValue) -> bytes:
    """The encoded image behind ``value``: the bytes themselves, or the file at the path or URL."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return storage.read_bytes(storage.resolve(value))


def open_image(value: ImageValue):
    """``value`` decoded as an RGB ``PIL.Image``."""
    from PIL import Image

    return Image.open(io.BytesIO(image_bytes(value))).convert("RGB")


def image_problem(value: Any) -> str:
    """'' if ``value`` is a readable image, else what is wrong with it (no such file, not an image, ...)."""
    from PIL import Image

    if value is None:
        return "null image"
    if isinstance(value, str) and not value.strip():
        return "empty image path"
    if not isinstance(value, (str, bytes, bytearray, memoryview)):
        return f"image is {type(value).__name__}, not a path or bytes"
    try:
        if isinstance(value, str) and not storage.exists(value):
            return f"no such file {value}"
        encoded = image_bytes(value)
    except Exception as err:  # a permission, an unreachable endpoint: the row is named, not a traceback
        return f"{value}: cannot be read ({type(err).__name__}: {err})"
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.verify()
    except Exception as err:  # PIL raises many kinds (UnidentifiedImageError, SyntaxError, OSError, ...)
        where = f"{value}: " if isinstance(value, str) else ""
        return f"{where}cannot decode the image ({type(err).__name__}: {err})"
    return ""


def image_problems(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Per row: '' if the image is fine, else what is wrong with it (``image_problem``)."""
    return np.array([image_problem(value) for value in values.to_pylist()], dtype=object)


def image_processor(model_path: str, trust_remote_code: bool = False):
    """The model directory's ``AutoImageProcessor``, loaded once per process (``local_files_only``)."""
    key = (model_path, trust_remote_code)
    if key not in _processors:
        from transformers import AutoImageProcessor

        _processors[key] = AutoImageProcessor.from_pretrained(model_path, local_files_only=True, trust_remote_code=trust_remote_code)
    return _processors[key]


def preprocess_images(values: Sequence[ImageValue], processor) -> np.ndarray:
    """Decode ``values`` and preprocess them with ``processor``: float32 ``(n, channels, height, width)``."""
    images = [open_image(value) for value in values]
    return np.asarray(processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)
