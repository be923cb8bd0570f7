"""The decisions route: an append-only log of :class:`DecisionRecord` s, on Kafka and/or as a Parquet dataset.

Parquet: ``DIR/route=decisions/part-<time>-<uuid>.parquet``, one file per decision (a reviewer makes a few thousand
a day; compact with any engine if that matters), written to a hidden temp name and renamed, so readers never see a
partial file. ``DIR`` is its own dataset, not the batch output's directory: engines that read ``DIR/**/*.parquet`` as
one table need one schema per dataset. Kafka: the ``kafka.decisions_topic`` (``cola.decisions``), key = id, through
:class:`~cola_moderation.connectors.kafka.sink.KafkaSink` (acks=all, flushed before the console answers).

:class:`DecisionLog` keeps every decision in memory (loaded from the route when the console starts), makes decisions
idempotent per (id, reviewer) and turns a different second decision into a new revision.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.dataset as pads

from cola_moderation.connectors.config import KafkaConfig
from cola_moderation.connectors.errors import SinkWriteError
from cola_moderation.connectors.filesystem import Location, location
from cola_moderation.connectors.parquet.sink import write_table
from cola_moderation.connectors.records import Route
from cola_moderation.pipeline.runtime.decisions import (
    DECISION_ARROW_SCHEMA,
    DecisionKind,
    DecisionRecord,
    DecisionSerializer,
    decision_table,
)
from cola_moderation.pipeline.runtime.records import OutputRecord

log = logging.getLogger(__name__)

DECISIONS_PARTITION = "route=decisions"


class ParquetDecisions:
    """Append decision records to ``DIR/route=decisions/`` and read them back."""

    def __init__(self, directory: str | Path) -> None:
        self.root: Location = location(directory)
        self.partition = self.root.child(DECISIONS_PARTITION)
        self.root.filesystem.create_dir(self.partition.path, recursive=True)

    def write(self, records: list[DecisionRecord]) -> None:
        table = decision_table(records).replace_schema_metadata({"cola.schema": DecisionSerializer.schema_version,
                                                                 "cola.record-type": "decision"})
        name = f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}.parquet"
        target = self.partition.child(name)
        try:
            write_table(table, target)
        except OSError as exc:
            raise SinkWriteError(f"cannot write decision file {target}: {exc}") from exc

    def read(self) -> list[DecisionRecord]:
        dataset = pads.dataset(self.partition.path, filesystem=self.root.filesystem, format="parquet",
                               schema=DECISION_ARROW_SCHEMA)
        return [DecisionRecord.from_json(row) for row in dataset.to_table().to_pylist()]

    def close(self) -> None:
        """Nothing is buffered."""


class KafkaDecisions:
    """Append decision records to the decisions topic and read it back from the beginning."""

    def __init__(self, kafka: KafkaConfig, *, bootstrap_servers: str | None = None) -> None:
        from cola_moderation.connectors.kafka.admin import ensure_topics
        from cola_moderation.connectors.kafka.sink import KafkaSink

        self.kafka = kafka
        self.bootstrap_servers = bootstrap_servers or kafka.bootstrap_servers
        self.topic = kafka.decisions_topic
        ensure_topics(self.bootstrap_servers, {self.topic: 1}, client_options=kafka.client_options)
        # The sink writes records of the serializer it is given to its output topic: point that at the decisions.
        self._sink = KafkaSink(kafka.model_copy(update={"output_topic": self.topic}), DecisionSerializer(),
                               bootstrap_servers=self.bootstrap_servers, client_id="cola-review")

    def write(self, records: list[DecisionRecord]) -> None:
        for record in records:
            self._sink.add(Route.OUTPUT, record)
        self._sink.flush(None)

    def read(self) -> list[DecisionRecord]:
        return read_decisions_topic(self.kafka, bootstrap_servers=self.bootstrap_servers)

    def close(self) -> None:
        self._sink.close()


def read_decisions_topic(kafka: KafkaConfig, *, bootstrap_servers: str | None = None,
                         idle_s: float = 1.5) -> list[DecisionRecord]:
    """Every decision on ``kafka.decisions_topic``, oldest first (reads until the topic is quiet for ``idle_s``)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=(bootstrap_servers or kafka.bootstrap_servers).split(","),
                             group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                             **kafka.client_options)
    try:
        partitions = consumer.partitions_for_topic(kafka.decisions_topic) or set()
        if not partitions:
            return []
        consumer.assign([TopicPartition(kafka.decisions_topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[DecisionRecord] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            polled = consumer.poll(timeout_ms=300)
            for batch in polled.values():
                for message in batch:
                    records.append(DecisionRecord.from_json(json.loads(message.value)))
                    quiet_since = time.monotonic()
        return sorted(records, key=lambda r: r.decided_at)
    finally:
        consumer.close()


@dataclass
class Outcome:
    """What :meth:`DecisionLog.decide` did: ``record`` is the new decision, or the identical earlier one."""

    record: DecisionRecord
    created: bool


@dataclass
class DecisionLog:
    """Every decision, by id and reviewer; writes new ones to all ``routes`` before they count."""

    routes: list[ParquetDecisions | KafkaDecisions]
    _by_key: dict[tuple[str, str], list[DecisionRecord]] = field(default_factory=dict)
    _by_id: dict[str, list[DecisionRecord]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> int:
        """Read the decisions already on the first route (a restarted console resumes where it was)."""
        if not self.routes:
            return 0
        records = self.routes[0].read()
        self._index(records)
        return len(records)

    def _index(self, records: Iterable[DecisionRecord]) -> None:
        for record in sorted(records, key=lambda r: (r.decided_at, r.revision)):
            self._append(record)

    def _append(self, record: DecisionRecord) -> None:
        self._by_key.setdefault((record.id, record.reviewer), []).append(record)
        self._by_id.setdefault(record.id, []).append(record)

    def decide(self, item: OutputRecord, *, reviewer: str, decision: DecisionKind, final_label: str | None,
               note: str) -> Outcome:
        """Record ``reviewer``'s decision on ``item``: the same decision again returns the earlier record; a different
        one is written as the next revision, superseding the previous (nothing is overwritten)."""
        with self._lock:
            history = self._by_key.get((item.id, reviewer), [])
            latest = history[-1] if history else None
            if latest is not None and latest.same_decision(decision, final_label, note):
                return Outcome(latest, created=False)
            record = DecisionRecord.from_review(
                item, decision=decision, final_label=final_label, reviewer=reviewer, note=note,
                revision=(latest.revision + 1) if latest else 1, supersedes=latest.decision_id if latest else None,
                now=datetime.now(UTC))
            for route in self.routes:
                route.write([record])
            self._append(record)
            return Outcome(record, created=True)

    def history(self, item_id: str) -> list[DecisionRecord]:
        """All decisions on ``item_id`` (every reviewer, every revision), oldest first."""
        with self._lock:
            return list(self._by_id.get(item_id, ()))

    def decided_ids(self) -> set[str]:
        with self._lock:
            return set(self._by_id)

    def latest(self) -> list[DecisionRecord]:
        """The newest decision per id (across reviewers)."""
        with self._lock:
            return [records[-1] for records in self._by_id.values()]

    def close(self) -> None:
        for route in self.routes:
            route.close()

