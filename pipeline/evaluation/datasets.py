"""Labelled image sets for ``cola eval``: a Parquet file, an image folder, or Fashion-MNIST.

Every loader returns an :class:`EvalDataset`: pixels ``[N, 3, S, S]`` float32 in [0, 1] at the model's input size
(decoded and resized exactly as the moderation pipeline does, so the attack perturbs what the model sees) and labels
``[N]`` indexing the taxonomy's label names. Dataset class names are matched to taxonomy labels by name (case and
``-``/``_``/space insensitive); a class the taxonomy lacks is an error naming it. Rows that cannot be used (no label,
undecodable image, already attacked) are skipped and counted in ``skipped``, never silently.

``--dataset`` values: ``fashion-mnist`` (Debian's ``dataset-fashion-mnist``, test split), ``fashion-mnist:DIR``
(the same files elsewhere), a ``.parquet`` file, or a directory with one sub-folder of images per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.decode import ImageDecoder
from cola_moderation.pipeline.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, DatasetError, load_fashion_mnist

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
LABEL_COLUMNS = ("label", "true_label")


@dataclass(frozen=True)
class EvalDataset:
    """``pixels`` ``[N, 3, S, S]`` in [0, 1]; ``labels`` ``[N]`` int64 into the taxonomy's ``label_names``."""

    name: str
    pixels: torch.Tensor
    labels: torch.Tensor
    label_names: tuple[str, ...]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, limit: int | None) -> EvalDataset:
        """The first ``limit`` images (all when ``None``): a deterministic subset for quick runs."""
        if limit is None or limit >= len(self):
            return self
        if limit < 1:
            raise DatasetError(f"--limit must be >= 1, got {limit}")
        return EvalDataset(self.name, self.pixels[:limit], self.labels[:limit], self.label_names, dict(self.skipped))

    def summary(self) -> dict[str, object]:
        counts = torch.bincount(self.labels, minlength=len(self.label_names)).tolist()
        return {"name": self.name, "images": len(self), "image_size": int(self.pixels.shape[-1]),
                "per_class": {n: c for n, c in zip(self.label_names, counts, strict=True) if c},
                "skipped": dict(self.skipped)}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def label_indices(names: list[str], label_names: tuple[str, ...], *, source: str) -> torch.Tensor:
    """Map dataset class names to taxonomy indices; raises :class:`DatasetError` naming unknown classes."""
    lookup = {_key(name): i for i, name in enumerate(label_names)}
    unknown = sorted({name for name in names if _key(name) not in lookup})
    if unknown:
        raise DatasetError(f"{source}: classes {unknown} are not taxonomy labels ({', '.join(label_names)})")
    return torch.tensor([lookup[_key(name)] for name in names], dtype=torch.int64)


def _decode(payloads: list[bytes], *, size: int, decode: DecodeConfig | None) -> tuple[torch.Tensor, list[int]]:
    """Decode in batches; returns pixels and the indices of the payloads that decoded."""
    chunks: list[torch.Tensor] = []
    kept: list[int] = []
    with ImageDecoder(size=size, config=decode) as decoder:
        for start in range(0, len(payloads), 512):
            batch = decoder.decode(payloads[start : start + 512])
            chunks.append(batch.pixels)
            kept.extend(start + i for i in batch.indices)
    pixels = torch.cat(chunks) if chunks else torch.empty((0, 3, size, size))
    return pixels, kept


def load_parquet(path: Path, *, label_names: tuple[str, ...], size: int, image_column: str = "image",
                 label_column: str | None = None, decode: DecodeConfig | None = None) -> EvalDataset:
    """Rows of ``path`` with encoded image bytes in ``image_column`` and a class name in ``label_column`` (default:
    ``label``, else ``true_label``). Rows with a null label, undecodable bytes, or ``attacked = true`` (already
    adversarial copies, e.g. in the bundled samples) are skipped and counted."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read Parquet dataset {path}: {exc}") from None
    columns = table.column_names
    if label_column is None:
        label_column = next((c for c in LABEL_COLUMNS if c in columns), None)
        if label_column is None:
            raise DatasetError(f"{path}: no label column (looked for {', '.join(LABEL_COLUMNS)}; has {columns})")
    for column in (image_column, label_column):
        if column not in columns:
            raise DatasetError(f"{path}: column {column!r} is missing (has {columns})")
    images = table.column(image_column).to_pylist()
    labels = table.column(label_column).to_pylist()
    attacked = table.column("attacked").to_pylist() if "attacked" in columns else [False] * len(labels)
    skipped = {"no_label": 0, "attacked": 0, "undecodable": 0}
    rows = []
    for i, (image, label, was_attacked) in enumerate(zip(images, labels, attacked, strict=True)):
        if label is None or image is None:
            skipped["no_label"] += 1
        elif was_attacked:
            skipped["attacked"] += 1
        else:
            rows.append(i)
    pixels, kept = _decode([images[i] for i in rows], size=size, decode=decode)
    skipped["undecodable"] = len(rows) - len(kept)
    names = [str(labels[rows[k]]) for k in kept]
    return EvalDataset(str(path), pixels, label_indices(names, label_names, source=str(path)), label_names, skipped)


def load_image_folder(root: Path, *, label_names: tuple[str, ...], size: int,
                      decode: DecodeConfig | None = None) -> EvalDataset:
    """``root/<class name>/<image files>``, files in sorted order; undecodable files are skipped and counted."""
    paths, names = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.iterdir()):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(file)
                names.append(folder.name)
    if not paths:
        raise DatasetError(f"{root}: no images in class sub-folders (expected {root}/<class>/<image>)")
    label_indices(sorted(set(names)), label_names, source=str(root))  # fail before decoding on unknown classes
    pixels, kept = _decode([p.read_bytes() for p in paths], size=size, decode=decode)
    labels = label_indices([names[k] for k in kept], label_names, source=str(root))
    return EvalDataset(str(root), pixels, labels, label_names, {"undecodable": len(paths) - len(kept)})


def load_fashion_mnist_eval(*, label_names: tuple[str, ...], size: int, root: Path | str = DEFAULT_ROOT,
                            limit: int | None = None) -> EvalDataset:
    """The Fashion-MNIST test split (first ``limit`` images), resized bilinearly to ``size`` when it is not 28."""
    data = load_fashion_mnist("test", root=root)
    count = len(data) if limit is None else min(limit, len(data))
    pixels = data.pixels(slice(0, count))
    if pixels.shape[-1] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    names = [CLASS_NAMES[int(i)] for i in data.labels[:count]]
    labels = label_indices(names, label_names, source="fashion-mnist")
    return EvalDataset("fashion-mnist:test", pixels.contiguous(), labels, label_names, {})


def load_dataset(spec: str, *, label_names: tuple[str, ...], size: int, limit: int | None = None,
                 decode: DecodeConfig | None = None) -> EvalDataset:
    """Resolve a ``--dataset`` value (see the module docstring) and keep the first ``limit`` images."""
    if spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        root = spec.partition(":")[2] or DEFAULT_ROOT
        return load_fashion_mnist_eval(label_names=label_names, size=size, root=root, limit=limit)
    path = Path(spec)
    if path.is_dir():
        dataset = load_image_folder(path, label_names=label_names, size=size, decode=decode)
    elif path.is_file():
        dataset = load_parquet(path, label_names=label_names, size=size, decode=decode)
    else:
        raise DatasetError(f"--dataset {spec!r}: not 'fashion-mnist', a Parquet file or an image folder")
    return dataset.head(limit)
