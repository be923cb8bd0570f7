"""Labelled image sets for ``cola eval``: a Parquet file, an image folder, or Fashion-MNIST.

Every loader returns an :class:`EvalDataset`: pixels ``[N, 3, S, S]`` float32 in [0, 1] at the model's input size
(decoded and resized exactly as the moderation pipeline does, so the attack perturbs what the model sees) and labels
``[N]`` indexing the taxonomy's label names. Dataset class names are matched to taxonomy labels by name (case and
``-``/``_``/space insensitive); a class the taxonomy lacks is an error naming it. Rows that cannot be used (no label,
undecodable image, already attacked) are skipped and counted in ``skipped``, never silently.

``--dataset`` values: ``fashion-mnist`` or ``fashion-mnist-test`` (Debian's ``dataset-fashion-mnist``, test split),
``fashion-mnist-train`` (its training split, for calibration and tuning), each optionally ``:DIR`` (the same files
elsewhere), a ``.parquet`` file, or a directory with one sub-folder of images per class. Labels are class names or
integer class indices in taxonomy order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.decode import ImageDecoder
from cola_moderation.pipeline.research.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, DatasetError, load_fashion_mnist

FASHION_MNIST_SPLITS: dict[str, Literal["train", "test"]] = {
    "fashion-mnist": "test", "fashion-mnist-test": "test", "fashion-mnist-train": "train"}
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
    start: int = 0
    """Index of the first image in the source (``--offset``): the slice is ``[start, start + len)``."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, limit: int | None, offset: int = 0) -> EvalDataset:
        """Images ``[offset, offset + limit)`` (to the end when ``limit`` is ``None``): a deterministic slice."""
        if limit is not None and limit < 1:
            raise DatasetError(f"--limit must be >= 1, got {limit}")
        if offset < 0 or (offset and offset >= len(self)):
            raise DatasetError(f"--offset {offset} is outside the dataset's {len(self)} images")
        if offset == 0 and (limit is None or limit >= len(self)):
            return self
        stop = len(self) if limit is None else min(len(self), offset + limit)
        return EvalDataset(self.name, self.pixels[offset:stop], self.labels[offset:stop], self.label_names,
                           dict(self.skipped), start=self.start + offset)

    @property
    def slice_name(self) -> str:
        return f"[{self.start}:{self.start + len(self)}]"

    def summary(self) -> dict[str, object]:
        counts = torch.bincount(self.labels, minlength=len(self.label_names)).tolist()
        return {"name": self.name, "slice": self.slice_name, "images": len(self),
                "image_size": int(self.pixels.shape[-1]),
                "per_class": {n: c for n, c in zip(self.label_names, counts, strict=True) if c},
                "skipped": dict(self.skipped)}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def label_indices(values: Sequence[object], label_names: tuple[str, ...], *, source: str) -> torch.Tensor:
    """Map dataset labels to taxonomy indices: class names (matched as in the module docstring) or integer class
    indices in taxonomy order (ints, or strings of digits that are not a class name). Raises
    :class:`DatasetError` naming unknown classes or out-of-range indices."""
    lookup = {_key(name): i for i, name in enumerate(label_names)}
    indices: list[int] = []
    unknown: set[str] = set()
    for value in values:
        if isinstance(value, bool):
            unknown.add(repr(value))
            continue
        if isinstance(value, (int, np.integer)) or (isinstance(value, str) and _key(value) not in lookup
                                                    and value.strip().isdigit()):
            index = int(value)
            if not 0 <= index < len(label_names):
                unknown.add(str(index))
                continue
            indices.append(index)
        elif _key(str(value)) in lookup:
            indices.append(lookup[_key(str(value))])
        else:
            unknown.add(str(value))
    if unknown:
        raise DatasetError(f"{source}: classes {sorted(unknown)} are neither taxonomy labels ({', '.join(label_names)})"
                           f" nor class indices 0..{len(label_names) - 1}")
    return torch.tensor(indices, dtype=torch.int64)


def decode_payloads(payloads: list[bytes], *, size: int, decode: DecodeConfig | None,
                    chunk: int = 512) -> tuple[torch.Tensor, list[int]]:
    """Decode in chunks of ``chunk``; returns pixels and the indices of the payloads that decoded."""
    chunks: list[torch.Tensor] = []
    kept: list[int] = []
    with ImageDecoder(size=size, config=decode) as decoder:
        for start in range(0, len(payloads), chunk):
            batch = decoder.decode(payloads[start : start + chunk])
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
    pixels, kept = decode_payloads([images[i] for i in rows], size=size, decode=decode)
    skipped["undecodable"] = len(rows) - len(kept)
    names = [labels[rows[k]] for k in kept]
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
    pixels, kept = decode_payloads([p.read_bytes() for p in paths], size=size, decode=decode)
    labels = label_indices([names[k] for k in kept], label_names, source=str(root))
    return EvalDataset(str(root), pixels, labels, label_names, {"undecodable": len(paths) - len(kept)})


def load_fashion_mnist_eval(*, label_names: tuple[str, ...], size: int, root: Path | str = DEFAULT_ROOT,
                            limit: int | None = None, offset: int = 0,
                            split: Literal["train", "test"] = "test") -> EvalDataset:
    """Fashion-MNIST images ``[offset, offset + limit)`` of ``split``, resized bilinearly to ``size`` when it is
    not 28."""
    data = load_fashion_mnist(split, root=root)
    if not 0 <= offset < len(data):
        raise DatasetError(f"--offset {offset} is outside Fashion-MNIST {split}'s {len(data)} images")
    stop = len(data) if limit is None else min(offset + limit, len(data))
    pixels = data.pixels(slice(offset, stop))
    if pixels.shape[-1] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    names = [CLASS_NAMES[int(i)] for i in data.labels[offset:stop]]
    labels = label_indices(names, label_names, source="fashion-mnist")
    return EvalDataset(f"fashion-mnist:{split}", pixels.contiguous(), labels, label_names, {}, start=offset)


def load_dataset(spec: str, *, label_names: tuple[str, ...], size: int, limit: int | None = None,
                 decode: DecodeConfig | None = None, offset: int = 0,
                 label_column: str | None = None) -> EvalDataset:
    """Resolve a ``--dataset`` value (see the module docstring) and keep images ``[offset, offset + limit)``.
    ``label_column``: the Parquet column holding class names or integer class indices."""
    name, _, root = spec.partition(":")
    if name in FASHION_MNIST_SPLITS:
        return load_fashion_mnist_eval(label_names=label_names, size=size, root=root or DEFAULT_ROOT, limit=limit,
                                       offset=offset, split=FASHION_MNIST_SPLITS[name])
    path = Path(spec)
    if path.is_dir():
        dataset = load_image_folder(path, label_names=label_names, size=size, decode=decode)
    elif path.is_file():
        dataset = load_parquet(path, label_names=label_names, size=size, decode=decode, label_column=label_column)
    else:
        raise DatasetError(f"--dataset {spec!r}: not 'fashion-mnist[-train|-test]', a Parquet file or an image "
                           "folder")
    return dataset.head(limit, offset)
