"""Exactly-once Kafka -> Kafka (``kafka.guarantee: exactly_once``): one Kafka transaction per batch holds the batch's
output, quarantine and dead-letter messages and its input offsets.

The loop of :mod:`cola_moderation.connectors.base` is unchanged; what each step means here::

    batch = source.poll()          # isolation_level=read_committed
    sink.add(...)                  # the first write of a batch begins its transaction
    sink.flush(batch)              # flush; send_offsets_to_transaction(offsets, group metadata); commit_transaction
    source.commit(batch)           # bookkeeping only: the offsets were committed with the outputs

:meth:`TransactionalKafkaSink.flush` raises :class:`~cola_moderation.connectors.errors.TransactionAbortedError` when the
batch cannot be committed (a write or the commit failed, or a rebalance or earlier abort made the batch stale): the
transaction is aborted and the source rewound to the committed offsets, so every batch in flight is stale. The
:class:`~cola_moderation.pipeline.runtime.delivery.DeliveryLoop` drops them and polls again: aborted work is retried,
and read_committed consumers never see it.
:class:`~cola_moderation.connectors.errors.TransactionFencedError` means a newer producer with the same transactional
id exists (a restarted consumer): this one must stop.

Fencing follows KIP-447: one transactional producer per consumer, with an id stable across restarts
(:func:`transactional_id`); a restarted consumer's ``init_transactions`` aborts its predecessor's open transaction and
fences it, and the offsets carry the consumer's group metadata so a broker with KIP-447 rejects offsets from a member
that lost its partitions in a rebalance. Not guaranteed: exactly-once for anything but Kafka in -> Kafka out, and on a
broker whose read_committed fetches do not filter aborted transactions (Tansu 0.6; see docs/delivery.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from cola_moderation.connectors.base import RecordSerializer, Sink, Source
from cola_moderation.connectors.config import KafkaConfig
from cola_moderation.connectors.errors import (
    BrokerError,
    SinkWriteError,
    TransactionAbortedError,
    TransactionFencedError,
)
from cola_moderation.connectors.kafka.sink import KafkaSink
from cola_moderation.connectors.kafka.source import KafkaSource
from cola_moderation.connectors.records import Batch

log = logging.getLogger(__name__)


def transactional_id(config: KafkaConfig, member: str) -> str:
    """The transactional id of consumer ``member``: ``<transactional_id_prefix or group_id>.<member>`` (the stream
    endpoint's :meth:`~cola_moderation.connectors.kafka.endpoint.KafkaEndpoint.prepare` names them the same way)."""
    return f"{config.transactional_id_prefix or config.group_id}.{member}"


def fence_transactional_ids(bootstrap_servers: str, transactional_ids: Sequence[str], *,
                            timeout_s: float = 30.0) -> None:
    """End what earlier producers with these transactional ids left open: ``init_transactions`` once per id (in
    parallel), which aborts a predecessor's open transaction and fences it.

    A job with several members runs this before any of them joins the group. Otherwise a member can fetch the
    committed offset of a partition while another member's predecessor (killed with a transaction open) is not yet
    fenced: a broker without KIP-447's stable offset fetch answers with the offsets from before that transaction (Tansu
    holds back *every* transactional offset commit that overlaps an open transaction), and the member processes and
    commits again what the previous run had committed. Raises a one-line :class:`BrokerError` when an id cannot be
    initialised within ``timeout_s``."""
    errors: list[str] = []

    def fence(tid: str) -> None:
        producer = None
        try:
            producer = KafkaProducer(bootstrap_servers=bootstrap_servers.split(","), transactional_id=tid,
                                     max_block_ms=int(timeout_s * 1000))
            producer.init_transactions()
        except KafkaError as exc:
            errors.append(f"{tid}: {type(exc).__name__}: {exc}")
        finally:
            if producer is not None:
                producer.close(timeout=1)

    threads = [threading.Thread(target=fence, args=(tid,), name=f"fence-{tid}") for tid in transactional_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise BrokerError(f"cannot fence the earlier producers of transactional ids {sorted(transactional_ids)} at "
                          f"{bootstrap_servers}: " + "; ".join(sorted(errors)))


def open_kafka(config: KafkaConfig, serializer: RecordSerializer, *, bootstrap_servers: str | None = None,
               member: str = "cola-consumer-0") -> tuple[Source, Sink]:
    """The source and sink of one consumer-group member (client ids ``member`` and ``<member>-sink``), for
    ``config.guarantee`` on ``config.client`` (``confluent``: :mod:`cola_moderation.connectors.kafka.confluent`)."""
    if config.client == "confluent":
        from cola_moderation.connectors.kafka import confluent

        source: Any = confluent.ConfluentKafkaSource(config, bootstrap_servers=bootstrap_servers, client_id=member)
        plain: Any = confluent.ConfluentKafkaSink
        transactional: Any = confluent.ConfluentTransactionalSink
    else:
        source, plain, transactional = (KafkaSource(config, bootstrap_servers=bootstrap_servers, client_id=member),
                                        KafkaSink, TransactionalKafkaSink)
    try:
        if config.guarantee == "exactly_once":
            return source, transactional(config, serializer, source, bootstrap_servers=bootstrap_servers,
                                         client_id=f"{member}-sink", transactional_id=transactional_id(config, member))
        return source, plain(config, serializer, bootstrap_servers=bootstrap_servers, client_id=f"{member}-sink")
    except BaseException:
        source.close()
        raise


def resolve_group_coordinator(producer: KafkaProducer, group_id: str, *, timeout_s: float = 10.0) -> bool:
    """Look up ``group_id``'s coordinator for ``producer``'s transaction manager now, so that the first
    ``send_offsets_to_transaction`` finds it. kafka-python otherwise looks it up only when the first TxnOffsetCommit
    needs it, and then waits out ``retry_backoff_ms`` twice (the request is re-queued as a retry): ~200 ms added to
    the first transaction of every producer. Best effort, on kafka-python internals: ``False`` (and the lazy lookup)
    when they differ or the lookup fails."""
    try:
        from kafka.producer.transaction_manager import CoordinatorType, FindCoordinatorHandler

        manager: Any = producer._transaction_manager
        if manager.coordinator(CoordinatorType.GROUP) is not None:
            return True
        handler = FindCoordinatorHandler(manager, CoordinatorType.GROUP, group_id)
        manager._enqueue_request(handler)
        producer._sender.wakeup()
        handler.result.wait(timeout_ms=timeout_s * 1000)
    except (ImportError, AttributeError, TypeError, KafkaError) as exc:
        log.debug("group coordinator not looked up ahead (kafka-python looks it up at the first offsets): %s", exc)
        return False
    return manager.coordinator(CoordinatorType.GROUP) is not None


class TransactionalKafkaSink(KafkaSink):
    """A :class:`KafkaSink` whose :meth:`flush` commits the batch's writes and ``source``'s offsets for it in one
    transaction. Construction calls ``init_transactions`` (fencing earlier producers with the same id). Not
    thread-safe; one per consumer."""

    def __init__(self, config: KafkaConfig, serializer: RecordSerializer, source: KafkaSource, *,
                 transactional_id: str, bootstrap_servers: str | None = None, client_id: str = "cola-sink") -> None:
        if not source.exactly_once:
            raise ValueError("TransactionalKafkaSink needs a source built from a config with guarantee: exactly_once "
                             "(it must read with isolation_level=read_committed and leave offset commits to the sink)")
        super().__init__(config, serializer, bootstrap_servers=bootstrap_servers, client_id=client_id,
                         producer_options={
            "transactional_id": transactional_id, "transaction_timeout_ms": config.transaction_timeout_ms,
                             "enable_idempotence": True, "acks": "all"})
        self.source = source
        self.transactional_id = transactional_id
        self._open = False
        self._producer.init_transactions()
        resolve_group_coordinator(self._producer, config.group_id)

    def _send(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]], *, kind: str) -> None:
        self._begin()
        super()._send(topic, key, value, headers, kind=kind)

    def _begin(self) -> None:
        if self._open:
            return
        try:
            self._producer.begin_transaction()
        except KafkaError as exc:
            raise self._fenced_error(exc) from exc
        self._open = True

    def flush(self, batch: Batch | None = None) -> None:
        """Commit everything added since the last flush and ``batch``'s input offsets as one transaction."""
        if batch is None:
            raise ValueError("TransactionalKafkaSink.flush needs the batch whose offsets it commits")
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
            self._producer.send_offsets_to_transaction(offsets, self.source.group_metadata())
            self._producer.commit_transaction()
            self._open = False
        except (KafkaError, SinkWriteError) as exc:
            if self._is_fatal(exc):
                self._open = False
                raise self._fenced_error(exc) from exc
            self._abort()
            self.source.rewind()
            raise TransactionAbortedError(f"batch {batch.key}: transaction aborted ({type(exc).__name__}: {exc}); "
                                          "the source was rewound to the committed offsets") from exc

    def _abort(self) -> None:
        self._futures.clear()
        self._errors.clear()
        if not self._open:
            return
        self._open = False
        try:
            self._producer.abort_transaction()
        except KafkaError as exc:
            if self._is_fatal(exc):
                raise self._fenced_error(exc) from exc
            log.warning("abort_transaction failed (%s: %s); starting a new producer, whose init_transactions aborts "
                        "the open transaction", type(exc).__name__, exc)
            self._new_producer()

    def _new_producer(self) -> None:
        try:
            self._producer.close(timeout=0)
        except KafkaError as exc:
            log.debug("closing the old transactional producer: %s", exc)
        self._producer = KafkaProducer(**self._producer_options)
        self._producer.init_transactions()
        resolve_group_coordinator(self._producer, self.config.group_id)

    def _is_fatal(self, exc: BaseException) -> bool:
        manager: Any = getattr(self._producer, "_transaction_manager", None)
        if manager is not None and manager.has_fatal_error():
            return True
        return "Fenced" in type(exc).__name__ or "ProducerFenced" in str(exc)

    def _fenced_error(self, exc: BaseException) -> TransactionFencedError:
        return TransactionFencedError(f"transactional producer {self.transactional_id!r} cannot go on "
                                      f"({type(exc).__name__}: {exc}); another consumer with this transactional id "
                                      "took over, or the producer hit a fatal error: stop this consumer")

    def close(self) -> None:
        """Abort the open transaction (if any) and close the producer."""
        try:
            self._abort()
        except (KafkaError, TransactionFencedError) as exc:
            log.info("open transaction not aborted on close (the broker aborts it on timeout or when the next "
                     "producer with this id starts): %s", exc)
        super().close()
