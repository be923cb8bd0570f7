"""Reviewers' decisions and the pipeline's own outputs as data: per-label thresholds for a target precision
(``cola calibrate --decisions``) and training images for ``cola finetune`` (TeCoA on reviewed final labels, FARE on
any output dataset).

Datasets (local directories):

* a decisions dataset (``DIR/route=decisions/*.parquet``, written by ``cola review``): the newest decision per id
  counts (any reviewer); its ``final_label`` is the label, its ``source`` names the input row the image is read from;
* a ``cola batch`` output dataset (``DIR/route=output``, ``route=quarantine``): every moderated record, no labels.

Images are read back from the input Parquet files the records name (``source.file`` / ``source.row``, the image
column holding bytes or a path under the batch job's rules); inputs that came from Kafka carry no file and are
skipped and counted. Reads Parquet with pyarrow only: this module does not import the runtime's record classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cola_moderation.operators.config import DecodeConfig
from cola_moderation.pipeline.research.evaluation.datasets import decode_payloads
from cola_moderation.pipeline.research.fashion_mnist import DatasetError

DECISIONS_PARTITION = "route=decisions"
OUTPUT_PARTITIONS = ("route=output", "route=quarantine")


def is_decisions_dataset(path: Path) -> bool:
    return (path / DECISIONS_PARTITION).is_dir()


def is_output_dataset(path: Path) -> bool:
    return any((path / partition).is_dir() for partition in OUTPUT_PARTITIONS)


def read_decisions(path: Path) -> list[dict[str, Any]]:
    """Every decision row of the decisions dataset ``path``, oldest first."""
    import pyarrow.dataset as pads

    if not is_decisions_dataset(path):
        raise DatasetError(f"{path}: not a decisions dataset (no {DECISIONS_PARTITION}/; cola review writes one)")
    try:
        rows = pads.dataset(path / DECISIONS_PARTITION, format="parquet").to_table().to_pylist()
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read decisions dataset {path}: {exc}") from None
    return sorted(rows, key=lambda r: (r["decided_at"], r["revision"]))


def latest_per_id(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The newest decision per id (rows oldest first in, first-decided order out)."""
    newest: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        newest.pop(row["id"], None)
        newest[row["id"]] = row
    return list(newest.values())


@dataclass(frozen=True)
class LabelThreshold:
    """One label's row of the precision / recall table."""

    label: str
    threshold: float | None
    precision: float | None
    recall: float | None
    flagged: int
    positives: int
    reviewed: int


def label_score(row: Mapping[str, Any], label: str) -> float:
    """The record's probability of ``label`` (0 when it is outside the record's top-k)."""
    return next((float(t["score"]) for t in row.get("topk") or () if t["label"] == label), 0.0)


def decision_thresholds(rows: Sequence[Mapping[str, Any]], labels: Sequence[str], *,
                        precision: float) -> list[LabelThreshold]:
    """Per label, the lowest score threshold at which the reviewed records scoring at least that much are at least
    ``precision`` correct (a record is a positive when its final label is the label), with its recall; threshold
    None where no threshold reaches the target. ``rows``: the newest decision per id."""
    table: list[LabelThreshold] = []
    for label in labels:
        scored = sorted(((label_score(r, label), r.get("final_label") == label) for r in rows), reverse=True)
        positives = sum(1 for _, positive in scored if positive)
        best: LabelThreshold | None = None
        hits = 0
        for index, (score, positive) in enumerate(scored):
            hits += positive
            if index + 1 < len(scored) and scored[index + 1][0] == score:
                continue  # a threshold takes every record with this score
            flagged = index + 1
            if score > 0 and hits / flagged >= precision:
                best = LabelThreshold(label, round(score, 6), hits / flagged, hits / positives if positives else None,
                                      flagged, positives, len(scored))
        table.append(best or LabelThreshold(label, None, None, None, 0, positives, len(scored)))
    return table


@dataclass(frozen=True)
class ReviewedImages:
    """``pixels`` ``[N, 3, S, S]`` float in [0, 1]; ``labels`` ``[N]`` int64 into ``label_names`` or None."""

    name: str
    pixels: torch.Tensor
    labels: torch.Tensor | None
    skipped: dict[str, int]


def load_reviewed(path: Path, *, label_names: tuple[str, ...], size: int, image_column: str = "image",
                  use_labels: bool = True, decode: DecodeConfig | None = None) -> ReviewedImages:
    """Training images from a decisions dataset (labels: the final labels) or an output dataset (no labels)."""
    import pyarrow.dataset as pads

    skipped = {"no_final_label": 0, "no_input_file": 0, "unreadable": 0, "undecodable": 0}
    if is_decisions_dataset(path):
        rows = latest_per_id(read_decisions(path))
        if use_labels:
            kept = [r for r in rows if r.get("final_label") is not None]
            skipped["no_final_label"] = len(rows) - len(kept)
            rows = kept
        unknown = sorted({r["final_label"] for r in rows if use_labels and r["final_label"] not in label_names})
        if unknown:
            raise DatasetError(f"{path}: final labels {unknown} are not in the taxonomy ({', '.join(label_names)})")
    elif is_output_dataset(path):
        use_labels = False
        rows = []
        for partition in OUTPUT_PARTITIONS:
            if (path / partition).is_dir():
                rows += pads.dataset(path / partition, format="parquet").to_table(columns=["id", "source"]).to_pylist()
    else:
        raise DatasetError(f"{path}: neither a decisions dataset ({DECISIONS_PARTITION}/) nor a cola batch output "
                           f"dataset ({' / '.join(OUTPUT_PARTITIONS)})")
    payloads: list[bytes] = []
    names: list[str] = []
    for row, payload in zip(rows, source_images([r["source"] for r in rows], image_column=image_column,
                                                skipped=skipped, max_bytes=(decode or DecodeConfig()).max_bytes),
                            strict=True):
        if payload is not None:
            payloads.append(payload)
            names.append(row.get("final_label") or "")
    pixels, decoded = decode_payloads(payloads, size=size, decode=decode, chunk=256)
    kept_names = [names[i] for i in decoded]
    skipped["undecodable"] = len(payloads) - len(kept_names)
    labels = torch.tensor([label_names.index(n) for n in kept_names], dtype=torch.int64) if use_labels else None
    return ReviewedImages(str(path), pixels, labels, skipped)


def source_images(sources: Sequence[Mapping[str, Any] | None], *, image_column: str, skipped: dict[str, int],
                  max_bytes: int) -> list[bytes | None]:
    """The image bytes of each ``{file, row}`` source (None, counted in ``skipped``, where there is none)."""
    import pyarrow.parquet as pq

    from cola_moderation.connectors.filesystem import location
    from cola_moderation.connectors.parquet.image_files import image_roots, read_image_file
    from cola_moderation.operators.errors import ColaError

    columns: dict[str, list[Any] | None] = {}
    out: list[bytes | None] = []
    for source in sources:
        if not source or source.get("file") is None:
            skipped["no_input_file"] += 1
            out.append(None)
            continue
        file = str(source["file"])
        if file not in columns:
            try:
                where = location(file)
                handle = where.path if where.local else where.filesystem.open_input_file(where.path)
                columns[file] = pq.read_table(handle, columns=[image_column]).column(image_column).to_pylist()
            except (OSError, ValueError, KeyError, ColaError):
                columns[file] = None
        cells = columns[file]
        row = int(source["row"])
        cell = cells[row] if cells is not None and 0 <= row < len(cells) else None
        if isinstance(cell, str) and not file.startswith(("s3://", "gs://", "hdfs://")):
            base = Path(location(file).path)
            try:
                cell = read_image_file(cell, base=base.parent, roots=image_roots(base), max_bytes=max_bytes,
                                       where=f"{file}:{row}")
            except ColaError:
                cell = None
        if not isinstance(cell, bytes):
            skipped["unreadable"] += 1
            out.append(None)
        else:
            out.append(cell)
    return out
