"""ParquetSource: stream rows of Parquet files as bounded batches (pyarrow ``iter_batches``, one row group at a time).

Inputs: files, directories (``*.parquet`` below them, hidden/underscore names skipped) or globs (``**`` allowed);
processed in sorted order. The image column holds the bytes (binary / large_binary) or a path / ``file://`` URI
(string; relative paths resolve from the Parquet file's directory, and a path is read only when it stays inside that
directory or ``parquet.image_roots``, names a regular file and holds at most ``max_image_bytes``: see
:mod:`cola_moderation.connectors.image_files`). The id column is used when present, else ids are
``file:row``. Every other column is passed through as metadata.

Memory: a batch holds at most ``batch_rows`` rows, fewer when the file's row-group statistics say rows are large
(about ``max_batch_bytes`` per batch); the reader holds one row group's pages at a time.

Resume: batch keys are ``<input name>-<hash of its path>-<first row>``, stable across runs with the same
``batch_rows`` / ``max_batch_bytes``; with ``skip=sink.is_complete`` batches a previous run finished are not read
again (whole row groups are skipped without reading them). A row that cannot be read (null image, unreadable path)
is a dead letter of stage ``source``.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import re
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cola_moderation.connectors.base import Source
from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.errors import MalformedRecordError
from cola_moderation.connectors.image_files import image_roots, read_image_file
from cola_moderation.connectors.records import Batch, DeadLetter, FilePosition, InputRecord
from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_BYTES = DecodeConfig().max_bytes


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Resolve files, directories and globs to a sorted, de-duplicated list of Parquet files."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[Path] = []
    for item in items:
        text = str(item)
        if any(char in text for char in "*?["):
            matches = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
        elif Path(text).is_dir():
            matches = [p for p in Path(text).rglob("*.parquet")
                       if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(text).parts)]
        elif Path(text).is_file():
            matches = [Path(text)]
        else:
            raise ConfigError(f"input {text!r}: no such file or directory")
        if not matches:
            raise ConfigError(f"input {text!r} matches no Parquet files")
        files.extend(matches)
    return sorted({path.resolve() for path in files})


def file_key(path: Path) -> str:
    """Stable, file-name-safe name of an input file: its stem plus a hash of its absolute path."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', path.stem)[:60]}-{digest}"


class ParquetSource(Source):
    """Finite source over Parquet files; :meth:`poll` returns ``None`` when every file is read."""

    def __init__(self, inputs: str | Path | Sequence[str | Path], config: ParquetConfig | None = None, *,
                 skip: Callable[[str], bool] | None = None, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> None:
        """``max_image_bytes``: the largest image file a path cell may name (the pipeline passes
        ``decode.max_bytes``)."""
        self.config = config or ParquetConfig()
        self.max_image_bytes = max_image_bytes
        self.files = expand_inputs(inputs)
        self._skip = skip
        self._batches = self._iterate()
        self.skipped_batches = 0

    def poll(self) -> Batch | None:
        return next(self._batches, None)

    def commit(self, batch: Batch) -> None:
        """Nothing to do: a file sink's finished part file is the durable acknowledgement (see ``skip``)."""

    def close(self) -> None:
        self._batches.close()

    def rows_per_batch(self, parquet: pq.ParquetFile) -> int:
        """``batch_rows``, lowered so that the largest row group's average row size times it stays near
        ``max_batch_bytes``."""
        meta = parquet.metadata
        widest = 0.0
        for index in range(meta.num_row_groups):
            group = meta.row_group(index)
            if group.num_rows:
                size = sum(group.column(c).total_uncompressed_size for c in range(group.num_columns))
                widest = max(widest, size / group.num_rows)
        by_bytes = int(self.config.max_batch_bytes // widest) if widest else self.config.batch_rows
        return max(1, min(self.config.batch_rows, by_bytes))

    def _iterate(self) -> Generator[Batch, None, None]:
        for path in self.files:
            parquet = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
            try:
                yield from self._file_batches(path, parquet)
            finally:
                parquet.close()

    def _file_batches(self, path: Path, parquet: pq.ParquetFile) -> Iterator[Batch]:
        cfg = self.config
        schema = parquet.schema_arrow
        if cfg.image_column not in schema.names:
            raise ConfigError(f"parquet.image_column: input {path} has no column {cfg.image_column!r} "
                              f"(columns: {schema.names})")
        image_type = schema.field(cfg.image_column).type
        if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)
                or pa.types.is_fixed_size_binary(image_type) or pa.types.is_string(image_type)
                or pa.types.is_large_string(image_type)):
            raise ConfigError(f"parquet.image_column: column {cfg.image_column!r} of {path} must be binary (image "
                              f"bytes) or string (paths / file:// URIs), got {image_type}")
        rows = self.rows_per_batch(parquet)
        name = file_key(path)
        first_row = 0
        for group in range(parquet.num_row_groups):
            group_rows = parquet.metadata.row_group(group).num_rows
            keys = [f"{name}-{start:012d}" for start in range(first_row, first_row + group_rows, rows)]
            if self._skip is not None and all(self._skip(key) for key in keys):
                self.skipped_batches += len(keys)
                first_row += group_rows
                continue
            for record_batch in parquet.iter_batches(batch_size=rows, row_groups=[group], use_threads=False):
                key = f"{name}-{first_row:012d}"
                if self._skip is not None and self._skip(key):
                    self.skipped_batches += 1
                else:
                    yield self._to_batch(key, path, first_row, record_batch)
                first_row += record_batch.num_rows

    def _to_batch(self, key: str, path: Path, first_row: int, table: pa.RecordBatch) -> Batch:
        cfg = self.config
        images = table.column(cfg.image_column).to_pylist()
        has_id = cfg.id_column in table.schema.names
        ids = table.column(cfg.id_column).to_pylist() if has_id else [None] * table.num_rows
        passthrough = [c for c in table.schema.names if c not in (cfg.image_column, cfg.id_column)]
        metadata = table.select(passthrough).to_pylist() if passthrough else [{} for _ in range(table.num_rows)]
        records: list[InputRecord] = []
        dead: list[DeadLetter] = []
        roots = image_roots(path, cfg.image_roots)
        for offset, (image, record_id, meta) in enumerate(zip(images, ids, metadata, strict=True)):
            position = FilePosition(str(path), first_row + offset)
            rid = str(record_id) if record_id is not None else position.default_id()
            try:
                payload = self._image_bytes(image, path, roots, position)
            except MalformedRecordError as exc:
                raw = image.encode() if isinstance(image, str) else b""
                dead.append(DeadLetter.from_exception(InputRecord(rid, raw, meta, position), exc))
                continue
            records.append(InputRecord(rid, payload, meta, position))
        return Batch(key, tuple(records), tuple(dead), (str(path), first_row, table.num_rows))

    def _image_bytes(self, value: Any, path: Path, roots: tuple[Path, ...], position: FilePosition) -> bytes:
        if value is None:
            raise MalformedRecordError(f"{position.default_id()}: image is null")
        if isinstance(value, bytes):
            return value
        return read_image_file(str(value), base=path.parent, roots=roots, max_bytes=self.max_image_bytes,
                               where=position.default_id())


