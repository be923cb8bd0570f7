"""``kafka.client: confluent``: the Kafka source, sink and exactly-once sink on librdkafka (``confluent-kafka``).

Same semantics as the kafka-python classes (:mod:`.source`, :mod:`.sink`, :mod:`.transactions`), whose docstrings
hold the contract; what differs is only the client:

* source: ``Consumer.consume`` in a loop bounded by ``max_batch_records`` / ``max_batch_bytes`` /
  ``max_batch_wait_ms``; rebalance callbacks (``on_assign`` / ``on_revoke``) and the answers to commits
  (``on_commit``) run inside ``consume``. A batch's offsets are committed without waiting for the broker's answer
  (``asynchronous=True``, once the sink acknowledged the batch); revocation and :meth:`ConfluentKafkaSource.close`
  commit synchronously what is unconfirmed (:mod:`.membership`). Per-message errors from the client are logged and
  skipped (the client retries fetches itself).
* sink: ``Producer.produce`` with delivery reports for failed sends only (``delivery.report.only.error``);
  :meth:`ConfluentKafkaSink.flush` waits until every send was acknowledged or failed and raises
  :class:`~cola_moderation.connectors.errors.SinkWriteError` if one failed or did not complete.
* exactly-once: ``init_transactions`` / ``begin_transaction`` / ``send_offsets_to_transaction`` (with the consumer's
  group metadata, KIP-447) / ``commit_transaction``; an error librdkafka marks fatal (fenced) raises
  :class:`~cola_moderation.connectors.errors.TransactionFencedError`, any other aborts the transaction and rewinds
  the source (:class:`~cola_moderation.connectors.errors.TransactionAbortedError`).

``kafka.client_options`` are librdkafka properties here (``security.protocol``, ``sasl.mechanism``, ...).
Install: ``pip install 'cola-moderation[confluent]'``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kafka.structs import TopicPartition as Partition

from cola_moderation.connectors.base import RecordSerializer, Sink, Source, check_route
from cola_moderation.connectors.config import KafkaConfig
from cola_moderation.connectors.errors import SinkWriteError, TransactionAbortedError, TransactionFencedError
from cola_moderation.connectors.kafka.membership import Collected, GroupMember, Positions, assemble_batch
from cola_moderation.connectors.kafka.sink import _HEADER_OVERHEAD, RECORD_KIND, dead_letter_headers
from cola_moderation.connectors.kafka.source import record_of
from cola_moderation.connectors.records import Batch, DeadLetter, Route
from cola_moderation.operators.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = "kafka.client: confluent needs confluent-kafka: pip install 'cola-moderation[confluent]'"


def _confluent() -> Any:
    try:
        import confluent_kafka
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return confluent_kafka


class ConfluentKafkaSource(GroupMember, Source):
    """:class:`~cola_moderation.connectors.kafka.source.KafkaSource` on librdkafka. Not thread-safe."""

    def __init__(self, config: KafkaConfig, *, bootstrap_servers: str | None = None,
                 client_id: str = "cola-source") -> None:
        ck = _confluent()
        self._ck = ck
        self.config = config
        self.exactly_once = config.guarantee == "exactly_once"
        options: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers or config.bootstrap_servers, "group.id": config.group_id,
            "client.id": client_id, "enable.auto.commit": False, "auto.offset.reset": config.auto_offset_reset,
            "session.timeout.ms": config.session_timeout_ms, "heartbeat.interval.ms": config.heartbeat_interval_ms,
            "max.poll.interval.ms": config.max_poll_interval_ms, "fetch.max.bytes": config.fetch_max_bytes,
            "max.partition.fetch.bytes": config.max_partition_fetch_bytes,
            "receive.message.max.bytes": max(config.fetch_max_bytes + 512, 100_000_000),
            "isolation.level": "read_committed" if self.exactly_once else "read_uncommitted",
            "on_commit": self._on_commit,
            **config.client_options,
        }
        self._consumer = ck.Consumer(options)
        self._init_membership()
        self._paused = False
        self._partitions: dict[tuple[str, int], Partition] = {}  # one key object per partition, not per message
        self._consumer.subscribe(list(config.input_topics), on_assign=self._on_assigned, on_revoke=self._on_revoked)

    # -- rebalance callbacks (run inside consume) --
    def _on_revoked(self, _consumer: Any, partitions: list[Any]) -> None:
        self._revoked({Partition(p.topic, p.partition) for p in partitions})

    def _on_assigned(self, _consumer: Any, partitions: list[Any]) -> None:
        self._assigned(Partition(p.topic, p.partition) for p in partitions)
        if self._paused and self._epochs:
            self._consumer.pause(self._native(self._epochs))
        log.info("partitions assigned: %s", sorted(f"{p.topic}-{p.partition}" for p in partitions))

    def _native(self, partitions: Iterable[Partition], offsets: Mapping[Partition, int] | None = None) -> list[Any]:
        tp = self._ck.TopicPartition
        return [tp(p.topic, p.partition, offsets[p]) if offsets is not None else tp(p.topic, p.partition)
                for p in partitions]

    # -- Source --
    def poll(self) -> Batch:
        cfg = self.config
        deadline = time.monotonic() + cfg.max_batch_wait_ms / 1000
        items: list[Collected] = []
        nbytes = 0
        while len(items) < cfg.max_batch_records and nbytes < cfg.max_batch_bytes:
            remaining = max(0.0, deadline - time.monotonic())
            before = dict(self._epochs)  # rebalance callbacks run inside consume
            fetched = []
            for message in self._consumer.consume(num_messages=cfg.max_batch_records - len(items), timeout=remaining):
                if message.error() is not None:
                    log.warning("consumer error (skipped; the client retries): %s", message.error())
                    continue
                topic, partition, value = message.topic(), message.partition(), message.value()
                tp = self._partitions.get((topic, partition)) or self._partitions.setdefault(
                    (topic, partition), Partition(topic, partition))
                fetched.append((tp, record_of(topic, partition, message.offset(), message.key(), value,
                                              message.headers(), cfg.value_format)))
                nbytes += len(value or b"")
            self._take(items, fetched, before)
            if remaining == 0.0:
                break
        return assemble_batch(items, self._epochs)

    def _commit_offsets(self, offsets: Mapping[Partition, int], *, reason: str, wait: bool = True) -> bool:
        try:
            self._consumer.commit(offsets=self._native(offsets, offsets), asynchronous=not wait)
        except self._ck.KafkaException as exc:  # retried with the next commit or before revocation
            log.warning("offset commit (%s) failed, will retry: %s", reason, exc)
            return False
        if not wait:
            self._inflight.update(offsets)
            self._sent.update(offsets)
        return True

    def _on_commit(self, error: Any, partitions: list[Any]) -> None:
        """librdkafka's answer to an asynchronous commit (served inside ``consume`` / ``close`` on this thread)."""
        request_failed = error is not None and not any(p.error is not None for p in partitions)
        for p in partitions:  # a partly failed commit sets ``error`` too: each partition's own error decides
            self._commit_answered(Partition(p.topic, p.partition), p.offset, error if request_failed else p.error)

    # -- exactly_once --
    def transaction_offsets(self, batch: Batch) -> list[Any] | None:
        """As :meth:`KafkaSource.transaction_offsets`, as librdkafka ``TopicPartition``\\ s."""
        if self._stale(batch):
            return None
        positions: Positions = batch.position or {}
        return self._native(positions, {tp: offset for tp, (_epoch, offset) in positions.items()})

    def group_metadata(self) -> Any:
        return self._consumer.consumer_group_metadata()

    def _seek_committed(self, partitions: list[Any]) -> None:
        missing = [tp for tp in partitions if tp not in self._committed]
        stored = {Partition(p.topic, p.partition): p.offset
                  for p in (self._consumer.committed(self._native(missing), timeout=30) if missing else [])}
        for tp in partitions:
            offset = self._committed.get(tp, stored.get(tp, -1001))
            if offset < 0:  # no committed offset (OFFSET_INVALID)
                offset = self._ck.OFFSET_BEGINNING if self.config.auto_offset_reset == "earliest" \
                    else self._ck.OFFSET_END
            self._consumer.seek(self._ck.TopicPartition(tp.topic, tp.partition, offset))

    def pause(self) -> None:
        self._paused = True
        if self._epochs:
            self._consumer.pause(self._native(self._epochs))

    def resume(self) -> None:
        self._paused = False
        if self._epochs:
            self._consumer.resume(self._native(self._epochs))

    @property
    def paused(self) -> bool:
        return self._paused

    def close(self) -> None:
        """Commit what is acknowledged or still unconfirmed (synchronously), then leave the group."""
        try:
            self._commit_unconfirmed(list(self._epochs), reason="on close")
        finally:
            self._consumer.close()


_REPORTS_EVERY = 256
"""Sends between two calls that serve (failed sends') delivery reports (``poll(0)``) before the flush."""


class ConfluentKafkaSink(Sink):
    """:class:`~cola_moderation.connectors.kafka.sink.KafkaSink` on librdkafka. Not thread-safe."""

    def __init__(self, config: KafkaConfig, serializer: RecordSerializer, *, bootstrap_servers: str | None = None,
                 client_id: str = "cola-sink", producer_options: Mapping[str, Any] | None = None) -> None:
        self._ck = _confluent()
        self.config = config
        self.serializer = serializer
        self._headers = list(serializer.headers)
        self.topics = {Route.OUTPUT: config.output_topic, Route.QUARANTINE: config.quarantine_topic,
                       Route.DEAD_LETTER: config.dead_letter_topic}
        self._producer_options: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers or config.bootstrap_servers, "client.id": client_id,
            "acks": "all", "retries": config.producer_retries, "message.max.bytes": config.max_request_size,
            "linger.ms": config.linger_ms, "request.timeout.ms": config.request_timeout_ms,
            # a report (a Python call and a Message object) per failed send only: flush() returns once every send is
            # acknowledged or failed, with the failures' reports served, so what did not fail was written
            "delivery.report.only.error": True,
            **config.client_options, **(producer_options or {}),
        }
        self._producer = self._ck.Producer(self._producer_options)
        self._sent = 0
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

    def _on_delivery(self, error: Any, message: Any) -> None:
        """librdkafka's delivery report of a failed send (served by ``poll`` / ``flush`` on this thread)."""
        if error is not None:
            key = (message.key() or b"").decode("utf-8", "replace")
            self._errors.append(f"record {key!r} to topic {message.topic()!r}: {error}")

    def _send(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]], *, kind: str) -> None:
        self._sent += 1  # sends attempted since the last flush, failed ones included
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:  # the client's queue is full: serve delivery reports, then retry
                self._producer.poll(0.1)
            except self._ck.KafkaException as exc:
                self._errors.append(f"{kind} {key.decode(errors='replace')!r} to topic {topic!r}: {exc}")
                break
        if self._sent % _REPORTS_EVERY == 0:  # serve failures' reports in long batches; flush serves the rest
            self._producer.poll(0)

    def flush(self, batch: Batch | None = None) -> None:
        try:
            remaining = self._producer.flush(self.config.flush_timeout_s)
            errors = list(self._errors)
            if remaining:
                errors.append(f"{remaining} sends did not complete within the flush")
            if errors:
                raise SinkWriteError(f"{len(self._errors) + remaining} of {self._sent} records of batch "
                                     f"{batch.key if batch else '?'} were not written to Kafka; first: {errors[0]}")
        finally:
            self._clear()

    def _clear(self) -> None:
        self._sent = 0
        self._errors = []

    def close(self) -> None:
        """Give records still buffered 5 s to go out (they belong to uncommitted batches)."""
        left = self._producer.flush(5)
        if left:
            log.warning("Kafka producer closed with %d records unsent (their batches were not committed)", left)


class ConfluentTransactionalSink(ConfluentKafkaSink):
    """:class:`~cola_moderation.connectors.kafka.transactions.TransactionalKafkaSink` on librdkafka."""

    def __init__(self, config: KafkaConfig, serializer: RecordSerializer, source: ConfluentKafkaSource, *,
                 transactional_id: str, bootstrap_servers: str | None = None, client_id: str = "cola-sink") -> None:
        if not source.exactly_once:
            raise ValueError("ConfluentTransactionalSink needs a source built from a config with guarantee: "
                             "exactly_once (read_committed, offsets left to the sink)")
        super().__init__(config, serializer, bootstrap_servers=bootstrap_servers, client_id=client_id,
                         producer_options={"transactional.id": transactional_id,
                                           "transaction.timeout.ms": config.transaction_timeout_ms,
                                           "enable.idempotence": True})
        self.source = source
        self.transactional_id = transactional_id
        self._open = False
        self._timeout = config.flush_timeout_s
        try:
            self._producer.init_transactions(self._timeout)
        except self._ck.KafkaException as exc:
            raise self._fenced_error(exc) from exc

    def _send(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]], *, kind: str) -> None:
        self._begin()
        super()._send(topic, key, value, headers, kind=kind)

    def _begin(self) -> None:
        if self._open:
            return
        try:
            self._producer.begin_transaction()
        except self._ck.KafkaException as exc:
            raise self._fenced_error(exc) from exc
        self._open = True

    def flush(self, batch: Batch | None = None) -> None:
        """Commit everything added since the last flush and ``batch``'s input offsets as one transaction."""
        if batch is None:
            raise ValueError("ConfluentTransactionalSink.flush needs the batch whose offsets it commits")
        offsets = self.source.transaction_offsets(batch)
        if offsets is None:
            self._abort()
            self.source.rewind()
            raise TransactionAbortedError(f"batch {batch.key}: a partition was revoked, reassigned or rewound since "
                                          "it was polled; its transaction was aborted and the source rewound to the "
                                          "committed offsets")
        try:
            self._begin()
            super().flush(batch)  # every send acknowledged, or SinkWriteError
            self._producer.send_offsets_to_transaction(offsets, self.source.group_metadata(), self._timeout)
            self._producer.commit_transaction(self._timeout)
            self._open = False
        except (self._ck.KafkaException, SinkWriteError) as exc:
            if self._is_fatal(exc):
                self._open = False
                raise self._fenced_error(exc) from exc
            self._abort()
            self.source.rewind()
            raise TransactionAbortedError(f"batch {batch.key}: transaction aborted ({type(exc).__name__}: {exc}); "
                                          "the source was rewound to the committed offsets") from exc

    def _abort(self) -> None:
        if not self._open:
            self._clear()
            return
        self._open = False
        try:
            self._producer.abort_transaction(self._timeout)
            # the sends it purged report failure (_PURGE_QUEUE) now: served here, they belong to this transaction,
            # not to the next one, which they would otherwise abort in turn
            self._producer.poll(0)
        except self._ck.KafkaException as exc:
            if self._is_fatal(exc):
                raise self._fenced_error(exc) from exc
            log.warning("abort_transaction failed (%s); starting a new producer, whose init_transactions aborts the "
                        "open transaction", exc)
            self._producer = self._ck.Producer(self._producer_options)
            self._producer.init_transactions(self._timeout)
        finally:
            self._clear()

    def _is_fatal(self, exc: BaseException) -> bool:
        error = exc.args[0] if exc.args else None
        if error is not None and hasattr(error, "fatal") and error.fatal():
            return True
        return "FENCED" in str(exc).upper()

    def _fenced_error(self, exc: BaseException) -> TransactionFencedError:
        return TransactionFencedError(f"transactional producer {self.transactional_id!r} cannot go on "
                                      f"({type(exc).__name__}: {exc}); another consumer with this transactional id "
                                      "took over, or the producer hit a fatal error: stop this consumer")

    def close(self) -> None:
        """Abort the open transaction (if any) and close the producer."""
        try:
            self._abort()
        except (self._ck.KafkaException, TransactionFencedError) as exc:
            log.info("open transaction not aborted on close (the broker aborts it on timeout or when the next "
                     "producer with this id starts): %s", exc)
        super().close()
