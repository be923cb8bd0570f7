"""Small Kafka client helpers for the demo, benchmarks and tests: produce messages, read a whole topic back."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from cola_moderation.connectors.kafka.client_logs import quiet_cancelled_refreshes

quiet_cancelled_refreshes()

Message = tuple[bytes | None, bytes, list[tuple[str, bytes]]]
"""(key, value, headers)."""


def produce(bootstrap: str, topic: str, messages: Sequence[Message], *,
            max_request_size: int = 16 << 20) -> list[tuple[int, int]]:
    """Send (key, value, headers) messages with acks=all; returns (partition, offset) of each."""
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", max_request_size=max_request_size,
                             linger_ms=5)
    try:
        futures = [producer.send(topic, key=key, value=value, headers=headers) for key, value, headers in messages]
        producer.flush(60)
        return [(meta.partition, meta.offset) for meta in (future.get(timeout=60) for future in futures)]
    finally:
        producer.close()


def read_topic(bootstrap: str, topic: str, *, expect: int, timeout_s: float = 60.0, idle_s: float = 1.0,
               isolation_level: str = "read_uncommitted") -> list[Any]:
    """All messages of ``topic`` from the start (partitions assigned directly: no consumer group, no join wait):
    read until ``expect`` messages arrived and then ``idle_s`` passed without more (to catch duplicates), or
    ``timeout_s``. (Tansu's end offsets are unreliable, so no seek_to_end.) ``isolation_level="read_committed"``
    reads as a downstream consumer of the exactly-once stream must."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20,
                             isolation_level=isolation_level)
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        consumer.assign([TopicPartition(topic, partition) for partition in sorted(partitions or ())])
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=100)
            for records in batch.values():
                messages.extend(records)
                last = time.monotonic()
            if len(messages) >= expect and time.monotonic() - last > idle_s:
                break
    finally:
        consumer.close()
    return messages


@dataclass(frozen=True)
class TransactionCheck:
    """One observation of :func:`probe_transactions`: what was checked, whether the broker behaved as Kafka
    specifies, and what was seen."""

    name: str
    ok: bool
    detail: str


def probe_transactions(bootstrap: str, *, peer: bool = True, timeout_s: float = 3.0,
                       abandoned_wait_s: float | None = None) -> list[TransactionCheck]:
    """Exercise a broker's transaction support the way the exactly-once stream path uses it, on fresh topics:

    * ``offsets_commit`` / ``offsets_abort``: ``send_offsets_to_transaction`` offsets become the group's committed
      offset on commit and are discarded on abort;
    * ``committed_visible``: committed transactional records are read with ``isolation_level=read_committed``;
    * ``aborted_hidden`` (and ``aborted_hidden_peer``, confluent-kafka): records of an aborted transaction are not;
    * ``open_hidden``: records of a transaction still open are not (the last stable offset holds them back);
    * ``offsets_visible_on_commit``: a transaction's offsets show as soon as it committed, also while another
      producer's transaction on a partition it wrote to is open (Tansu holds them back until no overlapping
      transaction is open, and loses them if the producer's epoch is later rolled back: docs/delivery.md);
    * ``fenced_producer_rejected``: after a second producer with the same ``transactional_id`` initialised, the first
      one's send / commit fails with ``ProducerFencedError`` and what it sends after fencing is not written;
    * ``fenced_open_aborted``: the first producer's open transaction (written before fencing) is aborted, so
      read_committed does not see it;
    * ``stale_member_fenced``: offsets sent in a transaction with group metadata that is not the group's (a member
      id the group does not have, a generation it is not at) are rejected while a real member holds the group
      (KIP-447: a consumer that lost its partitions in a rebalance it has not seen yet cannot commit them);
    * ``abandoned_timed_out`` (only with ``abandoned_wait_s``): a transaction whose producer went away without
      ending it (``transaction_timeout_ms`` 2000) is aborted by the broker within ``abandoned_wait_s``, so
      read_committed readers get past it.
    """
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    from cola_moderation.connectors.kafka.admin import ensure_topics

    tag = uuid.uuid4().hex[:8]
    source, sink, group, txn_id = f"probe-in-{tag}", f"probe-out-{tag}", f"probe-g-{tag}", f"probe-tx-{tag}"
    ensure_topics(bootstrap, {source: 1, sink: 1})
    servers = bootstrap.split(",")
    partition = TopicPartition(source, 0)
    checks: list[TransactionCheck] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append(TransactionCheck(name, ok, detail))

    def committed() -> int | None:
        consumer = KafkaConsumer(bootstrap_servers=servers, group_id=group, enable_auto_commit=False)
        try:
            return consumer.committed(partition)
        finally:
            consumer.close()

    def producer() -> KafkaProducer:
        made = KafkaProducer(bootstrap_servers=servers, transactional_id=txn_id, acks="all", max_block_ms=10_000)
        made.init_transactions()
        return made

    def read(isolation: str) -> list[bytes]:
        return [m.value for m in read_topic(bootstrap, sink, expect=1 << 30, timeout_s=timeout_s, idle_s=timeout_s,
                                            isolation_level=isolation)]

    first = producer()
    first.begin_transaction()
    first.send(sink, b"committed-1")
    first.send_offsets_to_transaction({partition: OffsetAndMetadata(5, "", -1)}, group)
    first.commit_transaction()
    check("offsets_commit", committed() == 5, f"committed offset after the commit: {committed()} (want 5)")
    first.begin_transaction()
    first.send(sink, b"aborted-1")
    first.flush()
    first.send_offsets_to_transaction({partition: OffsetAndMetadata(9, "", -1)}, group)
    first.abort_transaction()
    check("offsets_abort", committed() == 5, f"committed offset after the abort: {committed()} (want 5)")
    first.begin_transaction()
    first.send(sink, b"open-1")
    first.flush()
    seen = read("read_committed")
    check("committed_visible", b"committed-1" in seen, f"read_committed saw {seen}")
    check("aborted_hidden", b"aborted-1" not in seen, f"read_committed saw {seen}")
    check("open_hidden", b"open-1" not in seen, f"read_committed saw {seen} while the transaction was open")
    check(*_overlap_check(servers, sink, partition, group, txn_id=f"{txn_id}-overlap", committed=committed))

    second = producer()  # same transactional_id: bumps the epoch and fences the first producer
    try:
        first.send(sink, b"zombie-1")
        first.commit_transaction()
        check("fenced_producer_rejected", False, "the fenced producer committed a transaction")
    except KafkaError as exc:
        check("fenced_producer_rejected", "Fenced" in str(exc) or "Fenced" in type(exc).__name__,
              f"fenced producer's commit raised {type(exc).__name__}: {exc}")
    second.begin_transaction()
    second.send(sink, b"committed-2")
    second.commit_transaction()
    seen = read("read_committed")
    check("fenced_writes_hidden", b"zombie-1" not in seen, f"read_committed saw {seen}")
    check("fenced_open_aborted", b"open-1" not in seen and b"committed-2" in seen, f"read_committed saw {seen}")
    check(*_stale_member_check(servers, source, txn_id=f"{txn_id}-stale", timeout_s=max(timeout_s, 10.0)))
    for made in (first, second):
        with contextlib.suppress(KafkaError):
            made.close(timeout=2)
    if abandoned_wait_s is not None:
        abandoned_topic = f"probe-abandoned-{tag}"
        ensure_topics(bootstrap, {abandoned_topic: 1})
        abandoned = KafkaProducer(bootstrap_servers=servers, transactional_id=f"{txn_id}-abandoned",
                                  transaction_timeout_ms=2000)
        abandoned.init_transactions()
        abandoned.begin_transaction()
        abandoned.send(abandoned_topic, b"abandoned-1")
        abandoned.flush()
        later = KafkaProducer(bootstrap_servers=servers, transactional_id=f"{txn_id}-later")
        later.init_transactions()
        later.begin_transaction()
        later.send(abandoned_topic, b"committed-3")
        later.commit_transaction()
        time.sleep(abandoned_wait_s)
        seen = [m.value for m in read_topic(bootstrap, abandoned_topic, expect=1, timeout_s=timeout_s,
                                            isolation_level="read_committed")]
        check("abandoned_timed_out", b"committed-3" in seen,
              f"read_committed saw {seen} {abandoned_wait_s:g} s after a transaction (timeout 2 s) was abandoned")
        for made in (abandoned, later):
            with contextlib.suppress(KafkaError):
                made.close(timeout=0)
    if peer:
        try:
            peer_seen = [m.value() for m in read_committed_peer(bootstrap, sink, timeout_s=timeout_s)]
        except ImportError:
            pass
        else:
            check("aborted_hidden_peer", b"aborted-1" not in peer_seen and b"committed-2" in peer_seen,
                  f"confluent-kafka (read_committed) saw {peer_seen}")
    return checks


def _read_until(read: Callable[[], int | None], want: int, *, seconds: float) -> int | None:
    """``read()`` until it returns ``want`` or ``seconds`` passed (Apache Kafka writes a committed transaction's
    offset markers after EndTxn answers, so an offset may show a moment late); the last value read."""
    deadline = time.monotonic() + seconds
    value = read()
    while value != want and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


def _overlap_check(servers: list[str], sink: str, partition: TopicPartition, group: str, *, txn_id: str,
                   committed: Callable[[], int | None]) -> tuple[str, bool, str]:
    """The ``offsets_visible_on_commit`` check of :func:`probe_transactions`, run while another producer's
    transaction on ``sink`` is open: a second producer commits a transaction that writes to ``sink`` and commits
    offset 7 of ``partition`` for ``group``; the offset must show as soon as ``commit_transaction`` returns."""
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    name = "offsets_visible_on_commit"
    producer = KafkaProducer(bootstrap_servers=servers, transactional_id=txn_id, acks="all", max_block_ms=10_000)
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(sink, b"overlap-1")
        producer.send_offsets_to_transaction({partition: OffsetAndMetadata(7, "", -1)}, group)
        producer.commit_transaction()
        shown = _read_until(committed, 7, seconds=2.0)
        return name, shown == 7, (f"committed offset within 2 s of a committed transaction setting it to 7, while "
                                  f"another transaction on {sink} was open: {shown}")
    finally:
        with contextlib.suppress(KafkaError):
            producer.close(timeout=0)


def _stale_member_check(servers: list[str], topic: str, *, txn_id: str, timeout_s: float) -> tuple[str, bool, str]:
    """The ``stale_member_fenced`` check of :func:`probe_transactions`: a member joins a fresh group on ``topic``,
    then a transaction sends offsets for that group under another member id and generation."""
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    name = "stale_member_fenced"
    group = f"{txn_id}-group"
    member = KafkaConsumer(topic, bootstrap_servers=servers, group_id=group, enable_auto_commit=False,
                           session_timeout_ms=6000, heartbeat_interval_ms=1000)
    producer: KafkaProducer | None = None
    try:
        deadline = time.monotonic() + timeout_s
        while not member.assignment() and time.monotonic() < deadline:
            member.poll(timeout_ms=200)
        if not member.assignment():
            return name, False, f"no member of {group} was assigned {topic} within {timeout_s:g} s"
        real = member.group_metadata()
        stale = real._replace(generation_id=real.generation_id + 7, member_id="stale-member")
        producer = KafkaProducer(bootstrap_servers=servers, transactional_id=txn_id, acks="all", max_block_ms=10_000)
        producer.init_transactions()
        producer.begin_transaction()
        try:
            producer.send_offsets_to_transaction({TopicPartition(topic, 0): OffsetAndMetadata(3, "", -1)}, stale)
            producer.commit_transaction()
        except KafkaError as exc:
            return name, True, f"rejected: {type(exc).__name__}: {exc}"
        # A broker may hold a transaction's offsets back after EndTxn answers (Tansu does while another transaction
        # on a partition the commit overlaps is open: docs/delivery.md): read for a while before naming what showed.
        committed = _read_until(lambda: member.committed(TopicPartition(topic, 0)), 3, seconds=5.0)
        return name, False, (f"a transaction with member id {stale.member_id!r} and generation {stale.generation_id} "
                             f"committed (the broker shows offset {committed}) while {real.member_id!r} held {group} "
                             f"at generation {real.generation_id}")
    finally:
        with contextlib.suppress(KafkaError):
            member.close()
        if producer is not None:
            with contextlib.suppress(KafkaError):
                producer.close(timeout=0)


def read_committed_peer(bootstrap: str, topic: str, *, expect: int = 0, timeout_s: float = 3.0,
                        idle_s: float = 1.0) -> list[Any]:
    """Every message of ``topic`` (all partitions, from the start) as confluent-kafka (librdkafka) reads it with
    ``isolation.level=read_committed``: the peer client's view of transactions. Reads until ``expect`` messages
    arrived and ``idle_s`` passed without more, or ``timeout_s``. Returns confluent-kafka ``Message`` objects.
    Raises ImportError without confluent-kafka (``pip install 'cola-moderation[test]'``)."""
    import confluent_kafka

    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"peer-{uuid.uuid4().hex[:8]}",
                                         "enable.auto.commit": False, "isolation.level": "read_committed",
                                         "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20})
    messages: list[Any] = []
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                         for p in sorted(partitions)])
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is not None and message.error() is None:
                messages.append(message)
                last = time.monotonic()
            if expect and len(messages) >= expect and time.monotonic() - last > idle_s:
                break
    finally:
        consumer.close()
    return messages
