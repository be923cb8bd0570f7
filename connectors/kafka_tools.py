"""Small Kafka client helpers for the demo, benchmarks and tests: produce messages, read a whole topic back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

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


def read_topic(bootstrap: str, topic: str, *, expect: int, timeout_s: float = 60.0, idle_s: float = 1.0) -> list[Any]:
    """All messages of ``topic`` from the start (partitions assigned directly: no consumer group, no join wait):
    read until ``expect`` messages arrived and then ``idle_s`` passed without more (to catch duplicates), or
    ``timeout_s``. (Tansu's end offsets are unreliable, so no seek_to_end.)"""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)
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
