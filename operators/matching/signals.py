"""An input's signals: MD5 of the raw bytes, PDQ (256 bits, hex, with its quality 0-100) of the decoded image.

PDQ comes from ``pdqhash`` (Meta's reference C++ through Cython, the binding the ``threatexchange`` library uses). Its
hex form is the one ThreatExchange and Hasher-Matcher-Actioner write: bit 0 of the hash vector is the most
significant bit of the first hex digit. The pipeline hashes the image its decoder opened (RGB, EXIF orientation
applied, box-reduced only when at least 3x the model's input size), before the model's resize and crop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cola_moderation.operators.errors import MissingDependencyError

PDQ_BITS = 256
PDQ_HEX_LENGTH = PDQ_BITS // 4
MD5_HEX_LENGTH = 32


@dataclass(frozen=True, slots=True)
class ImageHashes:
    """The signals of one input. ``pdq`` is ``None`` when PDQ was not computed."""

    md5: str
    pdq: str | None = None
    pdq_quality: int | None = None


def _pdqhash() -> Any:
    try:
        import pdqhash
    except ImportError:
        raise MissingDependencyError("PDQ hashing needs pdqhash (builds with a C++ compiler): "
                                     "pip install 'cola-moderation[matching]'") from None
    return pdqhash


def pdq_of_array(rgb: np.ndarray) -> tuple[str, int]:
    """PDQ hex and quality of an ``[H, W, 3]`` uint8 RGB array."""
    bits, quality = _pdqhash().compute(np.ascontiguousarray(rgb, dtype=np.uint8))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


def pdq_of_image(image: Image.Image) -> tuple[str, int]:
    """PDQ hex and quality of a PIL image (converted to RGB first)."""
    return pdq_of_array(np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8))


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class Hasher:
    """Computes :class:`ImageHashes` from an input's bytes and its decoded image (the decoder's hook)."""

    def __init__(self, *, pdq: bool = True) -> None:
        self.pdq = pdq
        if pdq:
            _pdqhash()  # fail at start-up, not per input

    def __call__(self, data: bytes, image: Image.Image) -> ImageHashes:
        if not self.pdq:
            return ImageHashes(md5=md5_hex(data))
        pdq, quality = pdq_of_image(image)
        return ImageHashes(md5=md5_hex(data), pdq=pdq, pdq_quality=quality)


def hex_to_words(hexes: list[str]) -> np.ndarray:
    """``[n, 4]`` uint64 words of ``n`` PDQ hex strings (word j holds hex digits 16j..16j+15, big-endian)."""
    if not hexes:
        return np.zeros((0, 4), dtype=np.uint64)
    raw = np.frombuffer(bytes.fromhex("".join(hexes)), dtype=">u8").reshape(len(hexes), 4)
    return raw.astype(np.uint64)


def words_to_hex(words: np.ndarray) -> str:
    """Inverse of :func:`hex_to_words` for one ``[4]`` row."""
    return np.asarray(words, dtype=np.uint64).astype(">u8").tobytes().hex()
