"""ParquetSink: one set of part files per source batch, written atomically, in three datasets under ``DIR``::

    DIR/output/part-<batch key>.parquet       records routed to Route.OUTPUT (schema OUTPUT_SCHEMA + passthrough)
    DIR/quarantine/part-<batch key>.parquet   records routed to Route.QUARANTINE (same schema)
    DIR/dead_letter/part-<batch key>.parquet  dead letters                     (schema DEAD_LETTER_SCHEMA + passthrough)

Each subdirectory is a plain Parquet dataset (``pandas.read_parquet(DIR / "output")``); do not read ``DIR`` as one
dataset, it mixes the three schemas. Files carry the key-value metadata ``cola.schema`` = ``output/1`` or
``dead_letter/1``.

Output columns (``OUTPUT_SCHEMA``, version 1): ``schema_version`` int32, ``id`` string, ``label`` string,
``score`` float64, ``topk`` list<struct<label: string, score: float64>>, ``action`` string, ``adversarial_score``
float64, ``suspected_adversarial`` bool, ``method``, ``model``, ``policy_version`` strings, ``source``
struct<topic, partition, offset, file, row>, ``processed_at`` timestamp[us, UTC] (datetime, ISO-8601 string or epoch
seconds accepted), ``latency_ms`` float64; then the passthrough metadata (the record's ``metadata`` mapping) as
top-level columns, types inferred (all-null -> string; a name taken by a schema column becomes ``metadata.<name>``).
Missing fields are null. Dead letters: ``id``, ``payload`` large_binary (the original bytes), ``error_class``,
``error_message``, ``error_stage``, ``source``, then the passthrough metadata columns.

Atomicity and resume: each file is written to a hidden temp name, fsynced and renamed. :meth:`flush` writes the
quarantine and dead-letter parts first and the output part last (always, even with zero rows), so the output part
marks the batch complete: :meth:`is_complete` is what ``ParquetSource(skip=...)`` asks. A batch redone after a crash
rewrites the same names, so there are no duplicate rows. One writer per ``DIR``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cola_moderation.connectors.base import Sink, check_route
from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.errors import SinkWriteError
from cola_moderation.connectors.records import Batch, DeadLetter, Route
from cola_moderation.operators.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
SOURCE_TYPE = pa.struct([("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
                         ("file", pa.string()), ("row", pa.int64())])
OUTPUT_SCHEMA = pa.schema([
    ("schema_version", pa.int32()), ("id", pa.string()), ("label", pa.string()), ("score", pa.float64()),
    ("topk", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
    ("action", pa.string()), ("adversarial_score", pa.float64()), ("suspected_adversarial", pa.bool_()),
    ("method", pa.string()), ("model", pa.string()), ("policy_version", pa.string()), ("source", SOURCE_TYPE),
    ("processed_at", pa.timestamp("us", tz="UTC")), ("latency_ms", pa.float64()),
])
DEAD_LETTER_SCHEMA = pa.schema([
    ("id", pa.string()), ("payload", pa.large_binary()), ("error_class", pa.string()),
    ("error_message", pa.string()), ("error_stage", pa.string()), ("source", SOURCE_TYPE),
])
BATCHING_MANIFEST = "_cola_batching.json"
"""Batch settings the directory was written with (pyarrow and pandas ignore ``_``-prefixed files)."""
DIRECTORIES = {Route.OUTPUT: "output", Route.QUARANTINE: "quarantine", Route.DEAD_LETTER: "dead_letter"}


def _timestamp(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=UTC)
    return datetime.fromisoformat(str(value))


def flatten_metadata(row: Mapping[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """``row`` with its ``metadata`` mapping (if any) spread into top-level keys that do not clash with ``schema``."""
    metadata = row.get("metadata")
    if not isinstance(metadata, Mapping):
        return dict(row)
    flat = {key: value for key, value in row.items() if key != "metadata"}
    for key, value in metadata.items():
        flat[f"metadata.{key}" if key in schema.names or key in flat else key] = value
    return flat


def to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, kind: str) -> pa.Table:
    """Columns of ``schema`` with their declared types, then every other key (``metadata`` spread out) as an
    inferred column."""
    rows = [flatten_metadata(row, schema) for row in rows]
    columns: dict[str, pa.Array] = {}
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if field.name == "processed_at":
            values = [_timestamp(v) for v in values]
        try:
            columns[field.name] = pa.array(values, type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SinkWriteError(f"{kind} column {field.name!r} does not fit type {field.type}: {exc}") from exc
    extra = sorted({key for row in rows for key in row} - set(schema.names))
    for name in extra:
        values = [row.get(name) for row in rows]
        try:
            array = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SinkWriteError(f"{kind} passthrough column {name!r} has values of mixed types: {exc}") from exc
        if pa.types.is_null(array.type) or (pa.types.is_struct(array.type) and array.type.num_fields == 0):
            array = pa.array([None if v is None else str(v) for v in values], type=pa.string())
        columns[name] = array
    table = pa.table(columns)
    return table.replace_schema_metadata({"cola.schema": f"{kind}/{SCHEMA_VERSION}"})


def write_atomic(table: pa.Table, path: Path, *, compression: str) -> None:
    """Write ``table`` to a hidden temp file next to ``path``, fsync it, rename it over ``path``, fsync the dir."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as handle:
            pq.write_table(table, handle, compression=None if compression == "none" else compression)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class ParquetSink(Sink):
    """Write routed records of each batch to part files under ``directory`` (created if missing)."""

    def __init__(self, directory: str | Path, config: ParquetConfig | None = None) -> None:
        self.config = config or ParquetConfig()
        self.directory = Path(directory)
        self._rows: dict[Route, list[Mapping[str, Any]]] = {Route.OUTPUT: [], Route.QUARANTINE: []}
        self._dead: list[DeadLetter] = []
        self._check_batching()
        for name in DIRECTORIES.values():
            (self.directory / name).mkdir(parents=True, exist_ok=True)
            for stale in (self.directory / name).glob(".part-*.tmp"):  # left by a killed writer
                stale.unlink(missing_ok=True)

    def _check_batching(self) -> None:
        """Batch keys (and so part names) depend on the batching settings: a rerun into the same directory with
        other settings would redo finished batches under new names and duplicate rows. Record the settings on first
        use and refuse a mismatch."""
        settings = {"batch_rows": self.config.batch_rows, "max_batch_bytes": self.config.max_batch_bytes}
        manifest = self.directory / BATCHING_MANIFEST
        if manifest.exists():
            recorded = json.loads(manifest.read_text())
            changed = {key: (recorded.get(key), value) for key, value in settings.items() if recorded.get(key) != value}
            if changed:
                detail = ", ".join(f"parquet.{key}={new} (was {old})" for key, (old, new) in changed.items())
                raise ConfigError(f"{self.directory} was written with other batch settings: {detail}; resuming would "
                                  "duplicate rows. Use the original settings or a new output directory")
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(settings))

    def part_path(self, route: Route, key: str) -> Path:
        return self.directory / DIRECTORIES[route] / f"part-{key}.parquet"

    def is_complete(self, key: str) -> bool:
        """Whether the batch ``key`` was fully written by this or an earlier run."""
        return self.part_path(Route.OUTPUT, key).exists()

    def add(self, route: Route, record: Mapping[str, Any]) -> None:
        check_route(route)
        if "id" not in record:
            raise ValueError(f"output record has no 'id' field (fields: {sorted(record)})")
        self._rows[route].append(record)

    def add_dead_letter(self, dead: DeadLetter) -> None:
        self._dead.append(dead)

    def flush(self, batch: Batch | None = None) -> None:
        if batch is None:
            raise ValueError("ParquetSink.flush needs the batch: its key names the part files")
        try:
            dead_rows = [{"metadata": d.record.metadata, "id": d.record.id, "payload": d.record.payload,
                          "error_class": d.error_class, "error_message": d.error_message,
                          "error_stage": d.error_stage, "source": d.record.source.as_dict()} for d in self._dead]
            parts: list[tuple[Route, Sequence[Mapping[str, Any]], pa.Schema, str]] = [
                (Route.DEAD_LETTER, dead_rows, DEAD_LETTER_SCHEMA, "dead_letter"),
                (Route.QUARANTINE, self._rows[Route.QUARANTINE], OUTPUT_SCHEMA, "output"),
                (Route.OUTPUT, self._rows[Route.OUTPUT], OUTPUT_SCHEMA, "output")]
            for route, rows, schema, kind in parts:
                path = self.part_path(route, batch.key)
                if not rows and route is not Route.OUTPUT:
                    path.unlink(missing_ok=True)  # a stale part of an earlier, different attempt
                    continue
                try:
                    write_atomic(to_table(rows, schema, kind), path, compression=self.config.compression)
                except OSError as exc:
                    raise SinkWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
        finally:
            self._rows = {Route.OUTPUT: [], Route.QUARANTINE: []}
            self._dead = []
