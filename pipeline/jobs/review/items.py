"""The items a reviewer works on: the quarantined output records of a ``cola batch`` dataset or a Kafka quarantine
topic, and their images.

Images come from the records, never from a path a request names: a record's ``source`` says where its input was
(``{file, row}``: the row of the input Parquet file, whose image column holds the bytes or a path read under the
same rules as the batch job; ``{topic, partition, offset}``: the input message, read back from Kafka). The bytes are
decoded with the pipeline's decode limits and re-encoded as PNG, so the browser only ever gets a plain PNG.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from cola_moderation.connectors.config import KafkaConfig, ParquetConfig
from cola_moderation.connectors.filesystem import location
from cola_moderation.connectors.parquet.image_files import image_roots, read_image_file
from cola_moderation.connectors.parquet.sink import DEAD_LETTER_FIELDS, PARTITIONS, ROUTE_COLUMN
from cola_moderation.connectors.records import DeadLetter, FilePosition, KafkaPosition, Route
from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.errors import ColaError, ConfigError
from cola_moderation.pipeline.runtime.records import ARROW_SCHEMA, OutputRecord, position_from_dict

log = logging.getLogger(__name__)

PREVIEW_SIDE = 768
ROW_GROUPS_KEPT = 2
"""Longest side of the PNG a reviewer is shown (larger images are scaled down)."""


class ImageUnavailable(ColaError):
    """The record's image cannot be read back from its source (moved, deleted, not an image)."""


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """One quarantined output record, in the order the store found it."""

    record: OutputRecord
    order: int


def record_from_row(row: dict[str, Any], passthrough: dict[str, str]) -> OutputRecord:
    """An :class:`OutputRecord` from one row of the output dataset (``passthrough``: column -> original name)."""
    own = set(ARROW_SCHEMA.names)
    metadata = {passthrough.get(name, name): value for name, value in row.items()
                if name not in own and name not in DEAD_LETTER_FIELDS.names and name != ROUTE_COLUMN}
    source = {k: v for k, v in (row.get("source") or {}).items() if v is not None}
    return OutputRecord(id=row["id"], label=row["label"], score=row["score"],
                        topk=tuple((t["label"], t["score"]) for t in row["topk"] or ()), action=row["action"],
                        adversarial_score=row["adversarial_score"], suspected_adversarial=row["suspected_adversarial"],
                        method=row["method"], model=row["model"], policy_version=row["policy_version"],
                        source=position_from_dict(source), processed_at=row["processed_at"] or datetime.now(UTC),
                        latency_ms=row["latency_ms"] or 0.0, metadata=metadata,
                        schema_version=row["schema_version"] or 0,
                        review_reasons=tuple(row.get("review_reasons") or ()))


def read_route(directory: str | Path, route: Route) -> list[OutputRecord]:
    """The output records of one route of a ``cola batch`` dataset (local path or URI), in file order."""
    root = location(directory)
    partition = root.child(PARTITIONS[route])
    if not partition.is_dir():
        return []
    records = []
    dataset = pads.dataset(partition.path, filesystem=root.filesystem, format="parquet")
    for fragment in sorted(dataset.get_fragments(), key=lambda f: f.path):
        schema = fragment.physical_schema
        passthrough = {column: name for name, column in
                       json.loads((schema.metadata or {}).get(b"cola.passthrough", b"{}")).items()}
        records += [record_from_row(row, passthrough) for row in fragment.to_table().to_pylist()]
    return records


class ItemStore:
    """Quarantined records by id (a later record with the same id replaces an earlier one: at-least-once delivery
    may write a record twice) and their images."""

    def __init__(self, *, decode: DecodeConfig) -> None:
        self.decode = decode
        self._items: dict[str, ReviewItem] = {}
        self._lock = threading.Lock()

    def _add(self, record: OutputRecord) -> None:
        with self._lock:
            previous = self._items.get(record.id)
            self._items[record.id] = ReviewItem(record, previous.order if previous else len(self._items))

    def get(self, item_id: str) -> ReviewItem | None:
        with self._lock:
            return self._items.get(item_id)

    def items(self) -> list[ReviewItem]:
        with self._lock:
            return sorted(self._items.values(), key=lambda item: item.order)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def image_bytes(self, record: OutputRecord) -> bytes:
        """The original bytes of ``record``'s input (see the module docstring)."""
        raise ImageUnavailable(f"record {record.id!r}: no image source for {type(record.source).__name__}")

    def image_png(self, item: ReviewItem) -> bytes:
        """The item's image as a PNG of at most :data:`PREVIEW_SIDE` pixels a side."""
        return to_png(self.image_bytes(item.record), self.decode, where=f"record {item.record.id!r}")

    def close(self) -> None:
        """Release clients and threads."""


def to_png(payload: bytes, decode: DecodeConfig, *, where: str) -> bytes:
    """Decode ``payload`` (refusing oversized inputs from their header) and re-encode it as an RGB PNG."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(payload) > decode.max_bytes:
        raise ImageUnavailable(f"{where}: {len(payload)} bytes is over decode.max_bytes")
    try:
        with Image.open(io.BytesIO(payload)) as image:
            if image.width * image.height > decode.max_pixels:
                raise ImageUnavailable(f"{where}: {image.width}x{image.height} is over decode.max_pixels")
            image.seek(0)
            picture = ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageUnavailable(f"{where}: not a readable image: {exc}") from None
    picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


class ParquetItems(ItemStore):
    """The ``route=quarantine`` rows of a ``cola batch`` output dataset (local path or object-store URI); images from
    the input Parquet files the records name."""

    def __init__(self, directory: str | Path, *, parquet: ParquetConfig, decode: DecodeConfig) -> None:
        super().__init__(decode=decode)
        self.root = location(directory)
        self.parquet = parquet
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: not a directory (cola review reads a cola batch --output dataset)")
        for record in read_route(directory, Route.QUARANTINE):
            self._add(record)
        self._files: dict[str, pq.ParquetFile] = {}
        self._groups: dict[tuple[str, int], pa.ChunkedArray] = {}

    def image_bytes(self, record: OutputRecord) -> bytes:
        source = record.source
        if not isinstance(source, FilePosition):
            return super().image_bytes(record)
        where = f"record {record.id!r} ({source.file}:{source.row})"
        try:
            file = location(source.file)
            parquet = self._files.get(source.file)
            if parquet is None:
                handle = file.path if file.local else file.filesystem.open_input_file(file.path)
                parquet = self._files[source.file] = pq.ParquetFile(handle)
            column = self.parquet.image_column
            first = 0
            for group in range(parquet.metadata.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if source.row < first + rows:
                    cell = self._row_group(source.file, parquet, group, column)[source.row - first]
                    break
                first += rows
            else:
                raise ImageUnavailable(f"{where}: the file has only {first} rows")
        except (OSError, KeyError, pa.ArrowInvalid, ConfigError) as exc:
            raise ImageUnavailable(f"{where}: cannot read the input row: {exc}") from None
        value = cell.as_py()
        if isinstance(value, bytes):
            return value
        if isinstance(value, str) and file.local:
            roots = image_roots(Path(file.path), self.parquet.image_roots)
            try:
                return read_image_file(value, base=Path(file.path).parent, roots=roots, max_bytes=self.decode.max_bytes,
                                       where=where)
            except ColaError as exc:
                raise ImageUnavailable(str(exc)) from None
        raise ImageUnavailable(f"{where}: image cell is {type(value).__name__}")

    def _row_group(self, file: str, parquet: pq.ParquetFile, group: int, column: str) -> pa.ChunkedArray:
        """The image column of one row group, the last few kept: reviewers go through a queue in order, and a
        Parquet cell can only be read with its page."""
        key = (file, group)
        cached = self._groups.pop(key, None)
        if cached is None:
            cached = parquet.read_row_group(group, columns=[column]).column(column)
        self._groups[key] = cached
        while len(self._groups) > ROW_GROUPS_KEPT:
            self._groups.pop(next(iter(self._groups)))
        return cached


class KafkaItems(ItemStore):
    """The quarantine topic, read from the beginning without a consumer group (nothing is committed) and followed
    while the console runs; images from the input messages the records name."""

    def __init__(self, kafka: KafkaConfig, *, decode: DecodeConfig, bootstrap_servers: str | None = None,
                 topic: str | None = None) -> None:
        from kafka import KafkaConsumer, TopicPartition

        super().__init__(decode=decode)
        self.kafka = kafka
        self.topic = topic or kafka.quarantine_topic
        options: dict[str, Any] = {
            "bootstrap_servers": (bootstrap_servers or kafka.bootstrap_servers).split(","), "group_id": None,
            "enable_auto_commit": False, "auto_offset_reset": "earliest",
            "fetch_max_bytes": kafka.fetch_max_bytes, "max_partition_fetch_bytes": kafka.max_partition_fetch_bytes,
            **kafka.client_options,
        }
        self._options = options
        self._consumer = KafkaConsumer(**options)
        partitions = self._consumer.partitions_for_topic(self.topic) or set()
        if not partitions:
            self._consumer.close()
            raise ConfigError(f"Kafka topic {self.topic!r} does not exist on {options['bootstrap_servers']} (the "
                              "quarantine topic: kafka.quarantine_topic, or kafka:TOPIC)")
        self._consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
        self._consumer.seek_to_beginning()
        self._images: Any = None
        self._images_lock = threading.Lock()
        self._stop = threading.Event()
        self.follow(timeout_s=3.0)
        self._thread = threading.Thread(target=self._run, name="cola-review-items", daemon=True)
        self._thread.start()

    def follow(self, *, timeout_s: float) -> int:
        """Read what the topic holds until it stays quiet for a poll (at most ``timeout_s``); returns records read."""
        read = 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            polled = self._consumer.poll(timeout_ms=500, max_records=500)
            messages = [m for batch in polled.values() for m in batch]
            for message in messages:
                try:
                    self._add(OutputRecord.from_json(json.loads(message.value)))
                    read += 1
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("%s:%d:%d is not an output record: %s", message.topic, message.partition,
                                message.offset, exc)
            if not messages:
                break
        return read

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.follow(timeout_s=2.0)
            except Exception as exc:  # noqa: BLE001 - keep following; the console keeps serving what it has
                log.warning("reading %s: %s", self.topic, exc)
                self._stop.wait(2.0)

    def image_bytes(self, record: OutputRecord) -> bytes:
        from kafka import TopicPartition

        from cola_moderation.connectors.kafka.source import message_to_record

        source = record.source
        if not isinstance(source, KafkaPosition):
            return super().image_bytes(record)
        where = f"record {record.id!r} ({source.topic}:{source.partition}:{source.offset})"
        with self._images_lock:
            if self._images is None:
                from kafka import KafkaConsumer

                self._images = KafkaConsumer(**self._options)
            partition = TopicPartition(source.topic, source.partition)
            self._images.assign([partition])
            self._images.seek(partition, source.offset)
            for message in _poll_until(self._images.poll, timeout_s=10.0):
                if message.offset == source.offset:
                    converted = message_to_record(message, self.kafka.value_format)
                    if isinstance(converted, DeadLetter):
                        raise ImageUnavailable(f"{where}: {converted.error_message}")
                    return bytes(converted.payload)
                if message.offset > source.offset:
                    break
        raise ImageUnavailable(f"{where}: the input message is no longer on the topic")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()
        if self._images is not None:
            self._images.close()


def _poll_until(poll: Callable[..., Any], *, timeout_s: float) -> Iterator[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for batch in poll(timeout_ms=500, max_records=50).values():
            yield from batch
