"""A standard Kafka client other than ours (confluent-kafka / librdkafka) writes our input topics and reads our output
and dead-letter topics, over TCP against the embedded broker."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from cola_moderation.connectors.kafka.sink import KafkaSink
from cola_moderation.connectors.kafka.source import KafkaSource
from tests.connectors.jobs import PNG, SERIALIZER, drain
from tests.connectors.kafka_util import topics_config

confluent_kafka = pytest.importorskip("confluent_kafka")


def test_confluent_kafka_writes_inputs_and_reads_outputs(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka_broker.bootstrap_servers
    config = topics_config(bootstrap)
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 16 << 20})
    big = PNG + b"y" * (3 << 20)
    producer.produce(config.input_topics[0], key=b"c-1", value=PNG + b"small", headers=[("origin", b"librdkafka")])
    producer.produce(config.input_topics[0], key=b"c-2", value=big)
    producer.produce(config.input_topics[0], key=b"c-3", value=b"not an image")
    assert producer.flush(30) == 0
    with KafkaSource(config) as source, KafkaSink(config, SERIALIZER) as sink:
        assert drain(source, sink, idle_exit_s=2.0) == 3

    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"peer-{uuid.uuid4().hex[:6]}",
                                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 1500})
    consumer.subscribe([config.output_topic, config.dead_letter_topic])
    got: dict[str, tuple[str, bytes, dict[str, bytes]]] = {}
    deadline = time.monotonic() + 30
    try:
        while len(got) < 3 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            got[message.key().decode()] = (message.topic(), message.value(), dict(message.headers() or []))
    finally:
        consumer.close()
    assert got["c-1"][0] == config.output_topic
    record = json.loads(got["c-1"][1])
    assert record["id"] == "c-1" and record["label"] == "png"
    assert record["metadata"]["headers"] == {"origin": "librdkafka"}
    assert record["source"] == {"topic": config.input_topics[0], "partition": 0, "offset": 0}
    assert json.loads(got["c-2"][1])["source"]["offset"] == 1  # the 3 MB image made it through
    topic, value, headers = got["c-3"]
    assert topic == config.dead_letter_topic and value == b"not an image"
    assert headers["error.class"] == b"DecodeError" and headers["source.offset"] == b"2"
