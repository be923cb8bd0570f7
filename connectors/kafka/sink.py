"""KafkaSink: output records keyed by id on the output / quarantine topics; dead letters on the dead-letter topic.

Output message: key = the record's id, value = its JSON form, headers = the serializer's (``content-type`` and
``cola.schema-version`` for :class:`cola_moderation.pipeline.runtime.records.OutputSerializer`); the sink itself knows
no record fields.

Producer: ``acks=all``, bounded retries, ``max_request_size`` from config. :meth:`add` sends asynchronously;
:meth:`flush` waits for every send and raises :class:`~cola_moderation.connectors.errors.SinkWriteError` if any failed,
so the caller does not commit the batch.

Dead-letter message: key = id, value = the original bytes, headers ``error.class``, ``error.message``,
``error.stage``, ``source.topic`` / ``source.partition`` / ``source.offset`` (or ``source.file`` / ``source.row``),
``cola.metadata`` (JSON, when there is metadata besides headers), then the original headers. A dead letter whose bytes
would exceed ``max_request_size`` is written without them and with header ``payload.dropped`` = original size, so one
oversized upload cannot block the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from cola_moderation.connectors.base import RecordSerializer, Sink, check_route
from cola_moderation.connectors.config import KafkaConfig
from cola_moderation.connectors.errors import SinkWriteError
from cola_moderation.connectors.json_codec import dumps_compact, finite_or_string
from cola_moderation.connectors.records import Batch, DeadLetter, Route

log = logging.getLogger(__name__)

_HEADER_OVERHEAD = 4096  # record + batch framing, generous
RECORD_KIND = {route: f"{route.value} record" for route in Route}
"""How a send failure names what it was sending (built once, not per record)."""


def dead_letter_headers(dead: DeadLetter) -> list[tuple[str, bytes]]:
    headers = [(key, value.encode()) for key, value in dead.error_fields().items()]
    headers += [(f"source.{key}", str(value).encode()) for key, value in dead.record.source.as_dict().items()]
    extra = {key: value for key, value in dead.record.metadata.items() if key != "headers"}
    if extra:
        headers.append(("cola.metadata", dumps_compact(extra, default=_json_default)))
    return headers + list(dead.record.headers)


def _json_default(value: Any) -> Any:
    """Passthrough values JSON lacks (timestamps from Parquet, numpy scalars) in the ``cola.metadata`` header."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return finite_or_string(value.item()) if hasattr(value, "item") else str(value)


class KafkaSink(Sink):
    """Write routed records to Kafka. Not thread-safe."""

    def __init__(self, config: KafkaConfig, serializer: RecordSerializer, *, bootstrap_servers: str | None = None,
                 client_id: str = "cola-sink", producer_options: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.serializer = serializer
        self._headers = list(serializer.headers)
        self.topics = {Route.OUTPUT: config.output_topic, Route.QUARANTINE: config.quarantine_topic,
                       Route.DEAD_LETTER: config.dead_letter_topic}
        options: dict[str, Any] = {
            "bootstrap_servers": (bootstrap_servers or config.bootstrap_servers).split(","),
            "client_id": client_id, "acks": "all", "retries": config.producer_retries,
            "max_request_size": config.max_request_size, "linger_ms": config.linger_ms,
            "request_timeout_ms": config.request_timeout_ms,
            **config.client_options, **(producer_options or {}),
        }
        self._producer_options = options
        self._producer = KafkaProducer(**options)
        self._futures: list[Any] = []
        self._errors: list[str] = []

    def add(self, route: Route, record: Any) -> None:
        check_route(route)
        key = self.serializer.key(record)
        self._send(self.topics[route], key.encode(), self.serializer.json_bytes(record), self._headers,
                   kind=RECORD_KIND[route])

    def add_dead_letter(self, dead: DeadLetter) -> None:
        headers = dead_letter_headers(dead)
        value = dead.record.payload
        framing = len(dead.record.id) + sum(len(k) + len(v) for k, v in headers) + _HEADER_OVERHEAD
        if len(value) + framing > self.config.max_request_size:
            log.warning("dead letter %r: %d original bytes exceed max_request_size; writing it without them",
                        dead.record.id, len(value))
            headers.append(("payload.dropped", str(len(value)).encode()))
            value = b""
        self._send(self.topics[Route.DEAD_LETTER], dead.record.id.encode(), value, headers,
                   kind="dead letter")

    def _send(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]], *, kind: str) -> None:
        try:
            self._futures.append(self._producer.send(topic, key=key, value=value, headers=headers))
        except KafkaError as exc:
            self._errors.append(f"{kind} {key.decode(errors='replace')!r} to topic {topic!r}: "
                                f"{type(exc).__name__}: {exc}")

    def flush(self, batch: Batch | None = None) -> None:
        try:
            try:
                self._producer.flush(timeout=self.config.flush_timeout_s)
            except KafkaError as exc:
                raise SinkWriteError(f"Kafka producer flush did not complete: {type(exc).__name__}: {exc}") from exc
            errors = list(self._errors)
            for future in self._futures:
                if not future.is_done:
                    errors.append("a send did not complete within the flush")
                elif future.failed():
                    errors.append(f"{type(future.exception).__name__}: {future.exception}")
            if errors:
                raise SinkWriteError(f"{len(errors)} of {len(self._futures) + len(self._errors)} records of batch "
                                     f"{batch.key if batch else '?'} were not written to Kafka; first: {errors[0]}")
        finally:
            self._futures.clear()
            self._errors.clear()

    def close(self) -> None:
        """Close the producer, giving records still buffered 5 s to go out (they belong to uncommitted batches, so
        losing them only means re-delivery)."""
        try:
            self._producer.close(timeout=5)
        except KafkaError as exc:
            log.warning("Kafka producer closed with records unsent (their batches were not committed): %s", exc)
