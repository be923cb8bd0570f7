"""ParquetSink: one Parquet dataset under ``DIR`` (a local path or a ``pyarrow.fs`` URI such as ``s3://bucket/out``),
partitioned hive-style by route::

    DIR/route=output/part-<roll>.parquet
    DIR/route=quarantine/part-<roll>.parquet
    DIR/route=dead_letter/part-<roll>.parquet

Every file has the same schema, so ``pyarrow.dataset.dataset(DIR, partitioning="hive")``, duckdb
``read_parquet('DIR/**/*.parquet', hive_partitioning=true)``, polars ``scan_parquet('DIR/**/*.parquet')`` and Spark
read the whole output in one call (the ``route`` column comes from the directory names):

1. the record's own columns (the serializer's ``arrow_schema``; null in dead-letter rows except ``id`` and
   ``source``),
2. the passthrough metadata, each column with its input Arrow type in every route (the source's schema when the sink
   is given ``passthrough``; else inferred from the first rows written and kept). A passthrough name that clashes
   with a column of 1. or 3. or with ``route`` is written as ``metadata_<name>``,
3. the dead-letter columns ``payload`` (large_binary, the original bytes), ``error_class``, ``error_message``,
   ``error_stage`` (null in output rows).

Files carry the key-value metadata ``cola.schema`` = ``<schema version>``, ``cola.batches`` (JSON list of the
source batch keys whose rows they hold) and ``cola.passthrough`` (JSON: passthrough name -> column name).

Sizing: :meth:`flush` accepts a complete batch into the current *roll*; a roll is written when it holds
``parquet.file_rows`` rows or ``parquet.file_bytes`` bytes (Arrow, in memory), and on :meth:`close`. A roll writes
one file per route that has rows, the output file last and always (even with no rows): it marks the roll's batches
complete (:meth:`is_complete`, what ``ParquetSource(skip=...)`` asks). A roll interrupted before its output file is
redone by the next run: files of rolls without an output file are deleted when the sink opens, so a rerun after a
kill writes no duplicate rows. Local files are written to a hidden temp name, fsynced and renamed; on object stores
an object appears only once its upload completed. One writer per ``DIR``.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cola_moderation.connectors.base import RecordSerializer, Sink, check_route
from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.errors import SinkWriteError
from cola_moderation.connectors.filesystem import Location, location
from cola_moderation.connectors.records import SOURCE_ARROW_TYPE, Batch, DeadLetter, Route, source_array
from cola_moderation.operators.errors import ConfigError

log = logging.getLogger(__name__)

DEAD_LETTER_FIELDS = pa.schema([
    ("payload", pa.large_binary()), ("error_class", pa.string()), ("error_message", pa.string()),
    ("error_stage", pa.string()),
])
"""Columns only dead letters fill (besides ``id`` and ``source``)."""
ROUTE_COLUMN = "route"
PARTITIONS = {route: f"{ROUTE_COLUMN}={route.value}" for route in Route}
BATCHING_MANIFEST = "_cola_batching.json"
"""Batch settings the directory was written with (readers skip ``_``-prefixed files)."""


def passthrough_names(passthrough: Sequence[str], taken: Sequence[str]) -> dict[str, str]:
    """Column name of each passthrough field: itself, or ``metadata_<name>`` (more ``metadata_`` while taken)."""
    used = set(taken) | {ROUTE_COLUMN}
    names: dict[str, str] = {}
    for name in passthrough:
        column = name
        while column in used:
            column = f"metadata_{column}"
        used.add(column)
        names[name] = column
    return names


def infer_passthrough(rows: Sequence[Mapping[str, Any]]) -> pa.Schema:
    """Arrow types of passthrough values (all-null and empty-struct columns become strings)."""
    fields = []
    for name in sorted({key for row in rows for key in row}):
        values = [row.get(name) for row in rows]
        try:
            kind = pa.array(values).type
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SinkWriteError(f"passthrough column {name!r} has values of mixed types: {exc}") from exc
        if pa.types.is_null(kind) or (pa.types.is_struct(kind) and kind.num_fields == 0):
            kind = pa.string()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


class ParquetSink(Sink):
    """Write routed records and dead letters as one hive-partitioned Parquet dataset under ``directory``."""

    def __init__(self, directory: str | Path, serializer: RecordSerializer,
                 config: ParquetConfig | None = None, *, passthrough: pa.Schema | None = None) -> None:
        self.config = config or ParquetConfig()
        self.serializer = serializer
        self.root: Location = location(directory)
        self._records: list[tuple[Route, Any]] = []
        self._dead: list[DeadLetter] = []
        self._pending: list[tuple[str, pa.Table]] = []  # (batch key, rows incl. the route column) of the roll
        self._pending_rows = 0
        self._pending_bytes = 0
        self._passthrough = passthrough
        self._schema: pa.Schema | None = None
        self._names: dict[str, str] = {}
        self.root.filesystem.create_dir(self.root.path, recursive=True)
        self._check_batching()
        self._completed = self._recover()
        if self._passthrough is not None:
            self._set_passthrough(self._passthrough)

    # -- opening: settings, finished batches, interrupted rolls --------------------------------------------------

    def _check_batching(self) -> None:
        """Batch keys depend on the batching settings: a rerun into the same directory with other settings would
        redo finished batches under new keys and duplicate rows. Record the settings on first use and refuse a
        mismatch."""
        settings = {"batch_rows": self.config.batch_rows, "max_batch_bytes": self.config.max_batch_bytes}
        manifest = self.root.child(BATCHING_MANIFEST)
        fs = self.root.filesystem
        if manifest.exists():
            with fs.open_input_stream(manifest.path) as handle:
                recorded = json.loads(handle.read())
            changed = {key: (recorded.get(key), value) for key, value in settings.items() if recorded.get(key) != value}
            if changed:
                detail = ", ".join(f"parquet.{key}={new} (was {old})" for key, (old, new) in changed.items())
                raise ConfigError(f"{self.root} was written with other batch settings: {detail}; resuming would "
                                  "duplicate rows. Use the original settings or a new output directory")
            return
        with fs.open_output_stream(manifest.path) as handle:
            handle.write(json.dumps(settings).encode())

    def _files(self, route: Route) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.root.child(PARTITIONS[route]).path, allow_not_found=True)
        return [info for info in self.root.filesystem.get_file_info(selector) if info.type == pafs.FileType.File]

    def _recover(self) -> set[str]:
        """Batch keys in finished rolls; deletes temp files and the files of rolls that have no output file."""
        fs = self.root.filesystem
        finished = {info.base_name for info in self._files(Route.OUTPUT) if info.base_name.startswith("part-")}
        for route in Route:
            for info in self._files(route):
                stale = info.base_name.startswith(".") or (route is not Route.OUTPUT
                                                           and info.base_name not in finished)
                if stale:
                    log.info("removing %s left by an interrupted run", info.path)
                    fs.delete_file(info.path)
        completed: set[str] = set()
        for name in sorted(finished):
            path = self.root.child(PARTITIONS[Route.OUTPUT], name).path
            with fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                metadata = parquet.schema_arrow.metadata or {}
                completed.update(json.loads(metadata.get(b"cola.batches", b"[]")))
                if self._passthrough is None and self._schema is None:
                    self._adopt(parquet.schema_arrow)
        return completed

    def _adopt(self, schema: pa.Schema) -> None:
        """Keep the passthrough columns (names and types) an earlier run wrote."""
        names: dict[str, str] = json.loads((schema.metadata or {}).get(b"cola.passthrough", b"{}"))
        by_column = {column: original for original, column in names.items()}
        self._set_passthrough(pa.schema([schema.field(column).with_name(by_column[column])
                                         for column in schema.names if column in by_column]))

    def _set_passthrough(self, passthrough: pa.Schema) -> None:
        record = self.serializer.arrow_schema
        self._passthrough = passthrough
        self._names = passthrough_names(passthrough.names, [*record.names, *DEAD_LETTER_FIELDS.names])
        self._schema = pa.schema([*record, *(f.with_name(self._names[f.name]) for f in passthrough),
                                  *DEAD_LETTER_FIELDS])

    @property
    def schema(self) -> pa.Schema | None:
        """The dataset's file schema (None until the passthrough columns are known)."""
        return self._schema

    @property
    def completed(self) -> frozenset[str]:
        """Keys of the batches the dataset holds."""
        return frozenset(self._completed)

    def is_complete(self, key: str) -> bool:
        """Whether the batch ``key`` was fully written by this or an earlier run."""
        return key in self._completed

    # -- adding ---------------------------------------------------------------------------------------------------

    def add(self, route: Route, record: Any) -> None:
        check_route(route)
        self._records.append((route, record))

    def add_dead_letter(self, dead: DeadLetter) -> None:
        self._dead.append(dead)

    def add_columns(self, key: str, routes: pa.Array, columns: Mapping[str, pa.Array], passthrough: pa.Table) -> None:
        """Accept a complete batch given as columns (the batch job's path): ``routes`` (string: ``output`` /
        ``quarantine`` / ``dead_letter``), the record's and the dead-letter ``columns`` by name (missing ones are
        null), ``passthrough`` under its input names. Same effect as ``add`` / ``add_dead_letter`` + ``flush``."""
        if self._schema is None:
            self._set_passthrough(passthrough.schema.remove_metadata())
        self._accept(key, self._table(routes, columns, passthrough))

    def flush(self, batch: Batch | None = None) -> None:
        """Accept the records added since the last flush as the complete batch ``batch``; write the roll once it
        reaches its size target. The records become the same columns the batch job hands to :meth:`add_columns`
        and take that path (the :class:`~cola_moderation.connectors.base.Sink` contract, for the delivery loop and
        library users; the batch job writes columns directly). Raises :class:`SinkWriteError` if a write failed
        (buffers are cleared either way)."""
        if batch is None:
            raise ValueError("ParquetSink.flush needs the batch: its key marks the batch complete")
        records, dead = self._records, self._dead
        self._records, self._dead = [], []
        rows = [self.serializer.passthrough(r) for _, r in records] + [d.record.metadata for d in dead]
        if self._schema is None:
            self._set_passthrough(infer_passthrough(rows))
        assert self._passthrough is not None
        try:
            passthrough = pa.Table.from_pylist(rows, schema=self._passthrough) if rows else \
                self._passthrough.empty_table()
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SinkWriteError(f"batch {batch.key}: passthrough metadata does not fit the dataset's columns "
                                 f"{self._passthrough}: {exc}") from exc
        extra = sorted({name for row in rows for name in row} - set(self._passthrough.names))
        if extra:
            log.warning("batch %s: passthrough columns %s are not in the dataset's schema and are dropped", batch.key,
                        extra)
        try:
            columns = dict(self.serializer.to_columns([r for _, r in records]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SinkWriteError(f"batch {batch.key}: output records do not fit the record schema: {exc}") from exc
        n_out = len(records)
        columns = {name: pa.concat_arrays([array, pa.nulls(len(dead), array.type)]) for name, array in columns.items()}
        columns["id"] = pa.concat_arrays([columns["id"].slice(0, n_out),
                                          pa.array([d.record.id for d in dead], pa.string())])
        columns["source"] = pa.concat_arrays([columns["source"].slice(0, n_out).cast(SOURCE_ARROW_TYPE),
                                              source_array([d.record.source for d in dead])])
        columns["payload"] = pa.array([None] * n_out + [d.record.payload for d in dead], pa.large_binary())
        for name, attribute in (("error_class", "error_class"), ("error_message", "error_message"),
                                ("error_stage", "error_stage")):
            columns[name] = pa.array([None] * n_out + [getattr(d, attribute) for d in dead], pa.string())
        routes = pa.array([route.value for route, _ in records] + [Route.DEAD_LETTER.value] * len(dead), pa.string())
        self.add_columns(batch.key, routes, columns, passthrough)  # the one write path

    def _table(self, routes: pa.Array, columns: Mapping[str, pa.Array], passthrough: pa.Table) -> pa.Table:
        assert self._schema is not None and self._passthrough is not None
        n = len(routes)
        arrays: list[pa.Array] = []
        for field in self.serializer.arrow_schema:
            array = columns.get(field.name)
            arrays.append(pa.nulls(n, field.type) if array is None else array)
        for field in self._passthrough:
            if field.name in passthrough.column_names:
                column = passthrough.column(field.name)
                try:
                    arrays.append(column.cast(field.type) if column.type != field.type else column)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SinkWriteError(f"passthrough column {field.name!r} of type {column.type} does not fit the "
                                         f"dataset's {field.type}: {exc}") from exc
            else:
                arrays.append(pa.nulls(n, field.type))
        for field in DEAD_LETTER_FIELDS:
            array = columns.get(field.name)
            arrays.append(pa.nulls(n, field.type) if array is None else array)
        arrays.append(routes)
        return pa.Table.from_arrays(arrays, schema=self._schema.append(pa.field(ROUTE_COLUMN, pa.string())))

    def _accept(self, key: str, table: pa.Table) -> None:
        self._pending.append((key, table))
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes
        if self._pending_rows >= self.config.file_rows or self._pending_bytes >= self.config.file_bytes:
            self.write_roll()

    # -- writing --------------------------------------------------------------------------------------------------

    def write_roll(self) -> None:
        """Write the accepted batches now: one file per route, the output file last."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._pending_rows = self._pending_bytes = 0
        assert self._schema is not None
        keys = [key for key, _ in pending]
        table = pa.concat_tables([t for _, t in pending])
        metadata = {"cola.schema": self.serializer.schema_version, "cola.batches": json.dumps(keys),
                    "cola.passthrough": json.dumps(self._names)}
        name = f"part-{uuid.uuid4().hex[:16]}.parquet"
        routes = table.column(ROUTE_COLUMN)
        for route in (Route.DEAD_LETTER, Route.QUARANTINE, Route.OUTPUT):
            rows = table.filter(pc.equal(routes, route.value)).drop_columns([ROUTE_COLUMN])
            if not rows.num_rows and route is not Route.OUTPUT:
                continue
            target = self.root.child(PARTITIONS[route], name)
            try:
                self._write(rows.cast(self._schema).replace_schema_metadata(metadata), target)
            except OSError as exc:
                raise SinkWriteError(f"cannot write {target}: {exc.strerror or exc}") from exc
        self._completed.update(keys)

    def _write(self, table: pa.Table, target: Location) -> None:
        write_table(table, target, compression=None if self.config.compression == "none" else self.config.compression)

    def close(self) -> None:
        """Write the batches accepted by :meth:`flush` (records added since the last flush belong to no complete
        batch and are dropped)."""
        self._records, self._dead = [], []
        self.write_roll()


def write_table(table: pa.Table, target: Location, *, compression: str | None = "snappy") -> None:
    """Write ``table`` as the Parquet file ``target`` so that readers see all of it or nothing: on object stores the
    object appears once its upload completed; on local disks a temp file is fsynced, renamed into place and the
    directory fsynced. Raises ``OSError`` (callers name the file in their own error)."""
    fs = target.filesystem
    fs.create_dir(target.path.rsplit("/", 1)[0], recursive=True)
    if not target.local:
        with fs.open_output_stream(target.path) as handle:
            pq.write_table(table, handle, compression=compression)
        return
    temp = f"{target.path.rsplit('/', 1)[0]}/.{target.name}.{os.getpid()}.tmp"
    try:
        with open(temp, "wb") as handle:
            pq.write_table(table, handle, compression=compression)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target.path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    directory = os.open(os.path.dirname(target.path), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
