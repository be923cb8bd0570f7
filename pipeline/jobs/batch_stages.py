"""The batch job's read and decode stages (Ray Data tasks), kept apart from the model stage so that the worker
processes running them import neither ``torch`` nor the model side: pyarrow, Pillow, NumPy and the connectors only
(measured: ~0.1 s of imports instead of ~1 s per worker process, CPU the model actor's start-up then has to itself).
:mod:`~cola_moderation.pipeline.jobs.batch` wires them into the pipeline; ``tests/pipeline/jobs/test_batch_stages.py``
holds the import boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.filesystem import Location
from cola_moderation.connectors.parquet.source import BadInputFileError, ParquetSource, SourceTable
from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.decode import ImageDecoder
from cola_moderation.operators.matching.signals import Hasher, ImageHashes

log = logging.getLogger(__name__)

PASSTHROUGH = "passthrough:"
"""Prefix of the passthrough columns between stages (keeps them apart from the job's own columns)."""


def read_file(items: pa.Table, *, files: list[Location], passthrough: pa.Schema, config: ParquetConfig,
              done: frozenset[str], max_image_bytes: int, conflicts: dict[str, str] | None = None
              ) -> Iterator[pa.Table]:
    """Read stage: every not-yet-written batch of each input file (``items["index"]`` into ``files``) as a table."""
    for index in items.column("index").to_pylist():
        with ParquetSource([files[index]], config, skip=done.__contains__, max_image_bytes=max_image_bytes,
                           conflicts=conflicts) as source:
            for part in _tables(source, files[index].uri, config):
                n = len(part)
                table = part.rows.append_column("key", pa.array([part.key] * n, pa.string()))
                table = table.append_column("batch_total", pa.array([n] * n, pa.int64()))
                for field in passthrough:
                    column = part.passthrough.column(field.name) if field.name in part.passthrough.column_names \
                        else pa.nulls(n, field.type)
                    table = table.append_column(PASSTHROUGH + field.name, column.cast(field.type))
                yield table


def decode_rows(batch: pa.Table, *, size: int, config: DecodeConfig, hashing: bool = False) -> pa.Table:
    """Decode stage: adds ``pixels`` (uint8 ``[3, size, size]`` per row, zeros where decoding failed) and
    ``decode_error`` (null when the row decoded); ``payload`` keeps only the bytes of rows that failed."""
    from ray.data.extensions import ArrowTensorArray  # in the task: importing ray early would bypass init_ray

    n = batch.num_rows
    pending = [i for i, error in enumerate(batch.column("error_class").to_pylist()) if error is None]
    payload = batch.column("payload")
    hasher = Hasher() if hashing else None
    with ImageDecoder(size=size, config=config.model_copy(update={"workers": 1}), hasher=hasher) as decoder:
        decoded = decoder.decode_arrays([payload[i].as_py() for i in pending])
    pixels = np.zeros((n, 3, size, size), dtype=np.uint8)
    frames: list[list[int] | None] = [None] * n  # animated rows: the sampled frame indices
    extra: list[bytes | None] = [None] * n  # animated rows: the frames after the first, uint8 [k - 1, 3, S, S]
    counts: list[int | None] = [None] * n
    rows_of: dict[int, list[int]] = {}
    for row, index in enumerate(decoded.indices):
        rows_of.setdefault(index, []).append(row)
    arrays = decoded.pixels
    for index, rows in rows_of.items():
        pixels[pending[index]] = arrays[rows[0]]
        if index in decoded.frame_counts:
            frames[pending[index]] = [decoded.frames[row] for row in rows]
            extra[pending[index]] = np.ascontiguousarray(arrays[rows[1:]]).tobytes()
            counts[pending[index]] = decoded.frame_counts[index]
    errors: list[str | None] = [None] * n
    for index, error in decoded.errors.items():
        errors[pending[index]] = str(error)
    decoded_rows = {pending[i] for i in decoded.indices}
    keep = pa.array([i not in decoded_rows for i in range(n)], pa.bool_())
    batch = batch.set_column(batch.schema.get_field_index("payload"), "payload",
                             pc.if_else(keep, payload, pa.scalar(None, pa.large_binary())))
    batch = (batch.append_column("decode_error", pa.array(errors, pa.string()))
             .append_column("pixels", ArrowTensorArray.from_numpy(pixels))
             .append_column("frames", pa.array(frames, pa.list_(pa.int32())))
             .append_column("frame_count", pa.array(counts, pa.int32()))
             .append_column("extra_frames", pa.array(extra, pa.large_binary())))
    if hashing:
        hashes: list[ImageHashes | None] = [None] * n
        for index, value in decoded.hashes.items():
            hashes[pending[index]] = value
        batch = batch.append_column("md5", pa.array([h and h.md5 for h in hashes], pa.string())).append_column(
            "pdq", pa.array([h and h.pdq for h in hashes], pa.string())).append_column(
            "pdq_quality", pa.array([h and h.pdq_quality for h in hashes], pa.int32()))
    return batch


def read_and_decode(items: pa.Table, *, read: Callable[[pa.Table], Iterator[pa.Table]],
                    decode: Callable[[pa.Table], pa.Table], batch_rows: int) -> Iterator[pa.Table]:
    """Fused read and decode stage (``ray.read_decode``): each table ``read`` yields, decoded ``batch_rows`` rows at a
    time (the batches the separate decode stage would get, except that none spans two read tables)."""
    for table in read(items):
        for start in range(0, table.num_rows, batch_rows):
            yield decode(table.slice(start, batch_rows))


def _tables(source: ParquetSource, file: str, config: ParquetConfig) -> Iterator[SourceTable]:
    """``source.tables()``; a file that turns out corrupt past its footer ends here: skipped from this point with a
    warning, or (``parquet.on_bad_file: fail``) the job fails naming it. Batches already yielded stay complete."""
    tables = source.tables()
    while True:
        try:
            part = next(tables)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as exc:
            reason = f"unreadable after its footer: {' '.join(str(exc).split())[:200]}"
            if config.on_bad_file == "fail":
                raise BadInputFileError(f"input {file}: {reason} (parquet.on_bad_file: fail)") from None
            log.warning("skipping the rest of input %s: %s (parquet.on_bad_file: skip)", file, reason)
            return
        yield part


