"""ParquetSource: stream rows of Parquet files as bounded batches (pyarrow ``iter_batches``, one row group at a time).

Inputs: files, directories (``*.parquet`` below them, hidden/underscore names skipped) or globs (``**`` allowed);
processed in sorted order. The image column holds the bytes (binary / large_binary) or a path / ``file://`` URI
(string; relative paths resolve from the Parquet file's directory, and a path is read only when it stays inside that
directory or ``parquet.image_roots``, names a regular file and holds at most ``max_image_bytes``: see
:mod:`cola_moderation.connectors.parquet.image_files`). The id column is used when present, else ids are
``file:row``. Every other column is passed through as metadata.

Memory: a batch holds at most ``batch_rows`` rows, fewer when the file's row-group statistics say rows are large
(about ``max_batch_bytes`` per batch); the reader holds one row group's pages at a time.

Resume: batch keys are ``<input name>-<hash of its path>-<first row>``, stable across runs with the same
``batch_rows`` / ``max_batch_bytes``; with ``skip=sink.is_complete`` batches a previous run finished are not read
again (whole row groups are skipped without reading them). A row that cannot be read (null image, unreadable path)
is a dead letter of stage ``source``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cola_moderation.connectors.base import Source
from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.errors import MalformedRecordError
from cola_moderation.connectors.filesystem import Location, expand
from cola_moderation.connectors.parquet.image_files import image_roots, read_image_file
from cola_moderation.connectors.records import Batch, DeadLetter, FilePosition, InputRecord
from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.errors import ColaError, ConfigError, error_fields

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_BYTES = DecodeConfig().max_bytes


def expand_inputs(inputs: str | Path | Location | Sequence[str | Path | Location]) -> list[Location]:
    """Resolve files, directories and globs (local, or ``pyarrow.fs`` URIs such as ``s3://bucket/prefix``) to a
    sorted, de-duplicated list of Parquet files."""
    return expand(inputs)


def file_key(file: Location) -> str:
    """Stable, file-name-safe name of an input file: its stem plus a hash of its absolute path / URI."""
    digest = hashlib.sha1(file.uri.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', file.stem)[:60]}-{digest}"


def open_parquet(file: Location) -> pq.ParquetFile:
    """A streaming reader of ``file`` (one row group's pages at a time)."""
    source = file.path if file.local else file.filesystem.open_input_file(file.path)
    return pq.ParquetFile(source, buffer_size=1 << 20, pre_buffer=False)


class SchemaConflictError(ColaError, ValueError):
    """An input file's passthrough column has a type that cannot join the other files' (see
    ``parquet.on_schema_conflict``); the file's rows are dead letters."""

    stage = "source"


def _promote(types: Sequence[pa.DataType]) -> pa.DataType | None:
    """The type Arrow's permissive promotion joins ``types`` into, or None."""
    try:
        unified = pa.unify_schemas([pa.schema([("c", t)]) for t in types], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return unified.field("c").type


def _casts_to_string(type_: pa.DataType) -> bool:
    try:
        pa.array([None], type_).cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False
    return True


def resolve_passthrough(files: Sequence[Location], config: ParquetConfig) -> tuple[pa.Schema, dict[str, str]]:
    """The passthrough columns of all ``files`` as one schema (id and image columns left out: the id is read as a
    string per file), and ``{file uri: reason}`` for the files ``parquet.on_schema_conflict`` leaves out; ``fail``
    raises :class:`~cola_moderation.operators.errors.ConfigError` naming the column and files instead."""
    drop = {config.image_column, config.id_column}
    columns: dict[str, list[tuple[str, pa.DataType]]] = {}
    for file in files:
        parquet = open_parquet(file)
        try:
            schema = parquet.schema_arrow
        finally:
            parquet.close()
        for field in schema:
            if field.name not in drop:
                columns.setdefault(field.name, []).append((file.uri, field.type))
    fields: list[pa.Field] = []
    conflicts: dict[str, str] = {}
    for name, typed in columns.items():
        target = _promote([t for _, t in typed])
        if target is None and config.on_schema_conflict == "fail":
            listed = ", ".join(f"{uri}: {t}" for uri, t in typed[:6])
            raise ConfigError(f"the input files' column {name!r} has incompatible types ({listed}) "
                              f"(parquet.on_schema_conflict: fail)")
        if target is None and config.on_schema_conflict == "cast" and all(_casts_to_string(t) for _, t in typed):
            target = pa.string()
        if target is None:  # skip the files that cannot join the first file's type
            reference = typed[0][1]
            joined = [(uri, t) for uri, t in typed if _promote([reference, t]) is not None]
            target = _promote([t for _, t in joined]) or reference
            for uri, type_ in typed:
                if (uri, type_) not in joined:
                    conflicts.setdefault(uri, f"schema conflict: column {name!r} is {type_}, the other inputs' is "
                                              f"{target} (parquet.on_schema_conflict: {config.on_schema_conflict}); "
                                              f"its rows are dead letters")
        fields.append(pa.field(name, target))
    return pa.schema(fields), conflicts


class BadInputFileError(ColaError, ValueError):
    """An input file is not readable Parquet or lacks the image column (see ``parquet.on_bad_file``)."""

    stage = "source"


def check_input_file(file: Location, config: ParquetConfig) -> str | None:
    """Why ``file`` cannot be read as an input (footer unreadable, not Parquet, no usable image column), or None."""
    try:
        parquet = open_parquet(file)
        try:
            schema = parquet.schema_arrow
        finally:
            parquet.close()
    except (OSError, pa.ArrowException, ValueError) as exc:
        return f"not a readable Parquet file: {' '.join(str(exc).split())[:200]}"
    if config.image_column not in schema.names:
        return f"no column {config.image_column!r} (parquet.image_column; columns: {schema.names[:20]})"
    image_type = schema.field(config.image_column).type
    if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)
            or pa.types.is_fixed_size_binary(image_type) or pa.types.is_string(image_type)
            or pa.types.is_large_string(image_type)):
        return f"column {config.image_column!r} is {image_type}, not binary (image bytes) or string (paths)"
    return None


def screen_input_files(files: Sequence[Location], config: ParquetConfig
                       ) -> tuple[list[Location], list[tuple[Location, str]]]:
    """Split ``files`` into readable inputs and (file, reason) pairs; with ``parquet.on_bad_file: fail`` the first
    bad file raises :class:`BadInputFileError` instead."""
    good: list[Location] = []
    bad: list[tuple[Location, str]] = []
    for file in files:
        reason = check_input_file(file, config)
        if reason is None:
            good.append(file)
        elif config.on_bad_file == "fail":
            raise BadInputFileError(f"input {file.uri}: {reason} (parquet.on_bad_file: fail)")
        else:
            log.warning("skipping input %s: %s (parquet.on_bad_file: skip)", file.uri, reason)
            bad.append((file, reason))
    return good, bad


ROW_FIELDS = pa.schema([
    ("id", pa.string()), ("payload", pa.large_binary()), ("file", pa.string()), ("row", pa.int64()),
    ("error_class", pa.string()), ("error_message", pa.string()), ("error_stage", pa.string()),
])
"""The columns of :class:`SourceTable.rows`: the input's id, image bytes (for a row that failed at the source: the
cell's raw bytes), source position, and the source-stage error (null when the row was read)."""


@dataclass(frozen=True)
class SourceTable:
    """One batch as columns: ``rows`` (:data:`ROW_FIELDS`) and ``passthrough`` (the input's other columns, with
    their Arrow types), row-aligned."""

    key: str
    rows: pa.Table
    passthrough: pa.Table

    def __len__(self) -> int:
        return self.rows.num_rows


class ParquetSource(Source):
    """Finite source over Parquet files; :meth:`poll` returns ``None`` when every file is read (:meth:`tables`
    yields the same batches as columns)."""

    def __init__(self, inputs: str | Path | Location | Sequence[str | Path | Location],
                 config: ParquetConfig | None = None, *, skip: Callable[[str], bool] | None = None,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES, conflicts: dict[str, str] | None = None) -> None:
        """``max_image_bytes``: the largest image file a path cell may name (the pipeline passes
        ``decode.max_bytes``). ``conflicts``: ``{file uri: reason}`` from :func:`resolve_passthrough`; every row of
        those files is a source-stage dead letter (:class:`SchemaConflictError`)."""
        self.conflicts = conflicts or {}
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

    def passthrough_schema(self) -> pa.Schema:
        """The passthrough columns of all inputs (unified; image and id columns left out; see
        :func:`resolve_passthrough`)."""
        return resolve_passthrough(self.files, self.config)[0]

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

    def tables(self) -> Iterator[SourceTable]:
        """Every not-skipped batch of every input, as columns."""
        for file in self.files:
            parquet = open_parquet(file)
            try:
                yield from self._file_tables(file, parquet)
            finally:
                parquet.close()

    def _iterate(self) -> Generator[Batch, None, None]:
        for table in self.tables():
            yield self._to_batch(table)

    def _file_tables(self, file: Location, parquet: pq.ParquetFile) -> Iterator[SourceTable]:
        cfg = self.config
        schema = parquet.schema_arrow
        if cfg.image_column not in schema.names:
            raise ConfigError(f"parquet.image_column: input {file} has no column {cfg.image_column!r} "
                              f"(columns: {schema.names})")
        image_type = schema.field(cfg.image_column).type
        if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)
                or pa.types.is_fixed_size_binary(image_type) or pa.types.is_string(image_type)
                or pa.types.is_large_string(image_type)):
            raise ConfigError(f"parquet.image_column: column {cfg.image_column!r} of {file} must be binary (image "
                              f"bytes) or string (paths / file:// URIs), got {image_type}")
        rows = self.rows_per_batch(parquet)
        name = file_key(file)
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
                    yield self._to_table(key, file, first_row, record_batch)
                first_row += record_batch.num_rows

    def _to_table(self, key: str, file: Location, first_row: int, batch: pa.RecordBatch) -> SourceTable:
        cfg = self.config
        n = batch.num_rows
        image = batch.column(cfg.image_column)
        rows = pa.array(range(first_row, first_row + n), pa.int64())
        if cfg.id_column in batch.schema.names:
            given = batch.column(cfg.id_column).cast(pa.string())
            ids = [rid if rid is not None else f"{file.uri}:{first_row + i}" for i, rid in enumerate(given.to_pylist())]
        else:
            ids = [f"{file.uri}:{row}" for row in range(first_row, first_row + n)]
        errors: list[ColaError | None] = [None] * n
        if pa.types.is_string(image.type) or pa.types.is_large_string(image.type):  # paths: read the files
            roots = image_roots(Path(file.path), cfg.image_roots) if file.local else ()
            payload: list[bytes | None] = []
            for i, cell in enumerate(image.to_pylist()):
                try:
                    payload.append(self._image_bytes(cell, file, roots, f"{file.uri}:{first_row + i}"))
                except MalformedRecordError as exc:
                    errors[i] = exc
                    payload.append(cell.encode() if isinstance(cell, str) else b"")
            payloads = pa.array(payload, pa.large_binary())
        else:
            payloads = image.cast(pa.large_binary())
            if payloads.null_count:
                for i in range(n):
                    if not payloads[i].is_valid:
                        errors[i] = MalformedRecordError(f"{file.uri}:{first_row + i}: image is null")
                payloads = pa.array([b if b is not None else b"" for b in payloads.to_pylist()], pa.large_binary())
        conflict = self.conflicts.get(file.uri)
        if conflict is not None:  # never moderated, never dropped: each row is a dead letter naming the conflict
            errors = [e or SchemaConflictError(f"{file.uri}:{first_row + i}: {conflict}") for i, e in enumerate(errors)]
        fields = [None if e is None else error_fields(e, stage="source") for e in errors]
        table = pa.Table.from_arrays([
            pa.array(ids, pa.string()), payloads, pa.array([file.uri] * n, pa.string()), rows,
            pa.array([f and f["error.class"] for f in fields], pa.string()),
            pa.array([f and f["error.message"] for f in fields], pa.string()),
            pa.array([f and f["error.stage"] for f in fields], pa.string())], schema=ROW_FIELDS)
        passthrough = [c for c in batch.schema.names if c not in (cfg.image_column, cfg.id_column)
                       and conflict is None]
        return SourceTable(key, table, pa.Table.from_batches([batch.select(passthrough)]))

    def _to_batch(self, table: SourceTable) -> Batch:
        columns = table.rows.to_pydict()
        metadata = table.passthrough.to_pylist() if table.passthrough.num_columns else [{}] * len(table)
        records: list[InputRecord] = []
        dead: list[DeadLetter] = []
        for i, meta in enumerate(metadata):
            record = InputRecord(columns["id"][i], columns["payload"][i], meta,
                                 FilePosition(columns["file"][i], columns["row"][i]))
            if columns["error_class"][i] is None:
                records.append(record)
            else:
                dead.append(DeadLetter(record, columns["error_class"][i], columns["error_message"][i],
                                       columns["error_stage"][i]))
        first = columns["row"][0] if columns["row"] else 0
        return Batch(table.key, tuple(records), tuple(dead), (columns["file"][0] if columns["file"] else "", first,
                                                             len(table)))

    def _image_bytes(self, value: Any, file: Location, roots: tuple[Path, ...], where: str) -> bytes:
        if value is None:
            raise MalformedRecordError(f"{where}: image is null")
        if not file.local:
            raise MalformedRecordError(f"{where}: image location {value!r} refused (rule scheme): path-valued images "
                                       f"need a local input file, {file.uri} is not")
        return read_image_file(str(value), base=file.parent_dir(), roots=roots, max_bytes=self.max_image_bytes,
                               where=where)
