"""Few-shot labels: a label defined or sharpened by example images (``taxonomy.labels[].examples``).

Rule. For a label ``y`` with examples, the prototype ``p_y`` is the renormalised mean of the examples' unit-norm
image embeddings (decoded and sized as the pipeline decodes uploads). The label's class vector, which plain CLIP
scores against, becomes ``normalize((1 - w) * t_y + w * p_y)`` with ``t_y`` the mean of its text embeddings and ``w``
= ``examples_weight`` (0.5 by default; 1: the examples alone). ``p_y`` also joins the label's rows in the text bank,
so COLA transports image views to it like to any text of the label, and the text subspace COLA projects onto
contains it; with ``w = 1`` the label's texts are left out of the bank. Because the class vectors are what the
detector and the cascade's gate read too, the label works in every method and in the detector without other
changes.
"""

from __future__ import annotations

import glob
from pathlib import Path

import torch

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.config import LabelConfig
from cola_moderation.operators.decode import ImageDecoder
from cola_moderation.operators.errors import ConfigError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def example_files(spec: str) -> list[Path]:
    """The image files a folder or glob names (sorted)."""
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())


def example_images(label: LabelConfig) -> list[bytes]:
    """The encoded example images of ``label`` (folder, glob or Parquet)."""
    spec = label.examples
    if spec is None:
        return []
    where = f"taxonomy label {label.name!r}: examples {spec!r}"
    if spec.lower().endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        try:
            values = pq.read_table(spec, columns=["image"]).column("image").to_pylist()
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot read the image column: {exc}") from None
        images = []
        for row, value in enumerate(values, start=1):
            if isinstance(value, bytes):
                images.append(value)
            elif isinstance(value, str):
                file = Path(value.removeprefix("file://"))
                file = file if file.is_absolute() else Path(spec).parent / file
                try:
                    images.append(file.read_bytes())
                except OSError as exc:
                    raise ConfigError(f"{where} row {row}: cannot read {file}: {exc.strerror}") from None
            else:
                raise ConfigError(f"{where} row {row}: image is {type(value).__name__}, expected bytes or a path")
    else:
        images = [file.read_bytes() for file in example_files(spec)]
    if not images:
        raise ConfigError(f"{where}: no images found")
    return images


def prototype(backbone: Backbone, images: list[bytes], *, name: str = "?") -> torch.Tensor:
    """``[d]``: the renormalised mean of the unit-norm embeddings of ``images``."""
    with ImageDecoder(size=backbone.geometry.size) as decoder:
        decoded = decoder.decode(images)
    if decoded.errors:
        index, error = next(iter(decoded.errors.items()))
        raise ConfigError(f"taxonomy label {name!r}: example {index + 1} does not decode: {error}")
    features = torch.cat([backbone.encode_images(decoded.pixels[start : start + 64])
                          for start in range(0, len(images), 64)])
    return torch.nn.functional.normalize(torch.nn.functional.normalize(features, dim=-1).mean(dim=0), dim=-1)
