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
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cola_moderation.connectors.base import RecordSerializer, Sink, check_route
from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.errors import SinkWriteError
from cola_moderation.connectors.records import SOURCE_ARROW_TYPE, Batch, DeadLetter, Route, source_array
from cola_moderation.operators.errors import ConfigError

log = logging.getLogger(__name__)

DEAD_LETTER_SCHEMA = pa.schema([
    ("id", pa.string()), ("payload", pa.large_binary()), ("error_class", pa.string()),
    ("error_message", pa.string()), ("error_stage", pa.string()), ("source", SOURCE_ARROW_TYPE),
])
BATCHING_MANIFEST = "_cola_batching.json"
"""Batch settings the directory was written with (pyarrow and pandas ignore ``_``-prefixed files)."""
DIRECTORIES = {Route.OUTPUT: "output", Route.QUARANTINE: "quarantine", Route.DEAD_LETTER: "dead_letter"}


def passthrough_columns(rows: Sequence[Mapping[str, Any]], taken: Sequence[str], kind: str) -> dict[str, pa.Array]:
    """Passthrough metadata as inferred columns (all-null -> string); a name in ``taken`` becomes
    ``metadata.<name>``."""
    names = sorted({key for row in rows for key in row})
    columns: dict[str, pa.Array] = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            array = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SinkWriteError(f"{kind} passthrough column {name!r} has values of mixed types: {exc}") from exc
        if pa.types.is_null(array.type) or (pa.types.is_struct(array.type) and array.type.num_fields == 0):
            array = pa.array([None if v is None else str(v) for v in values], type=pa.string())
        columns[f"metadata.{name}" if name in taken else name] = array
    return columns


def table_of(columns: dict[str, pa.Array], passthrough: Sequence[Mapping[str, Any]], schema_tag: str) -> pa.Table:
    kind = schema_tag.split("/")[0]
    table = pa.table({**columns, **passthrough_columns(passthrough, list(columns), kind)})
    return table.replace_schema_metadata({"cola.schema": schema_tag})


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

    def __init__(self, directory: str | Path, serializer: RecordSerializer,
                 config: ParquetConfig | None = None) -> None:
        self.config = config or ParquetConfig()
        self.serializer = serializer
        self.directory = Path(directory)
        self._rows: dict[Route, list[Any]] = {Route.OUTPUT: [], Route.QUARANTINE: []}
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

    def add(self, route: Route, record: Any) -> None:
        check_route(route)
        self._rows[route].append(record)

    def add_dead_letter(self, dead: DeadLetter) -> None:
        self._dead.append(dead)

    def flush(self, batch: Batch | None = None) -> None:
        if batch is None:
            raise ValueError("ParquetSink.flush needs the batch: its key names the part files")
        try:
            dead = self._dead
            version = self.serializer.schema_version
            tables = {Route.DEAD_LETTER: lambda: table_of({
                "id": pa.array([d.record.id for d in dead], pa.string()),
                "payload": pa.array([d.record.payload for d in dead], pa.large_binary()),
                "error_class": pa.array([d.error_class for d in dead], pa.string()),
                "error_message": pa.array([d.error_message for d in dead], pa.string()),
                "error_stage": pa.array([d.error_stage for d in dead], pa.string()),
                "source": source_array([d.record.source for d in dead])},
                [d.record.metadata for d in dead], f"dead_letter/{version}")}
            for route in (Route.QUARANTINE, Route.OUTPUT):
                tables[route] = partial(self._output_table, self._rows[route])
            counts = {Route.DEAD_LETTER: len(dead), **{route: len(rows) for route, rows in self._rows.items()}}
            for route in (Route.DEAD_LETTER, Route.QUARANTINE, Route.OUTPUT):
                path = self.part_path(route, batch.key)
                if not counts[route] and route is not Route.OUTPUT:
                    path.unlink(missing_ok=True)  # a stale part of an earlier, different attempt
                    continue
                try:
                    write_atomic(tables[route](), path, compression=self.config.compression)
                except OSError as exc:
                    raise SinkWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
        finally:
            self._rows = {Route.OUTPUT: [], Route.QUARANTINE: []}
            self._dead = []

    def _output_table(self, records: list[Any]) -> pa.Table:
        serializer = self.serializer
        try:
            columns = serializer.to_columns(records)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SinkWriteError(f"output records do not fit the record schema: {exc}") from exc
        return table_of(columns, [serializer.passthrough(r) for r in records], f"output/{serializer.schema_version}")
