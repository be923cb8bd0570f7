"""The Kafka sink, on both clients: flush raises when the broker did not acknowledge (so the caller does not
commit), oversized dead letters are written without their bytes, routes are checked."""

from __future__ import annotations

import json

import pytest

from cola_moderation.connectors.base import Sink
from cola_moderation.connectors.config import KafkaConfig
from cola_moderation.connectors.errors import SinkWriteError
from cola_moderation.connectors.kafka.sink import KafkaSink
from cola_moderation.connectors.local.broker import EmbeddedBroker
from cola_moderation.connectors.records import DeadLetter, FilePosition, InputRecord, Route
from cola_moderation.pipeline.runtime.records import SCHEMA_VERSION
from tests.connectors.jobs import PNG, SERIALIZER, process
from tests.connectors.kafka_util import read_topic, topics_config


def _record(record_id: str, payload: bytes = b"x") -> InputRecord:
    return InputRecord(record_id, payload, {"user": "u"}, FilePosition("/data/in.parquet", 3))


def _output(record_id: str) -> object:
    return process(_record(record_id, PNG)).record  # type: ignore[union-attr]


def open_sink(config: KafkaConfig) -> Sink:
    if config.client == "confluent":
        from cola_moderation.connectors.kafka.confluent import ConfluentKafkaSink

        return ConfluentKafkaSink(config, SERIALIZER)
    return KafkaSink(config, SERIALIZER)


def test_flush_raises_when_the_broker_is_gone(kafka_client: str) -> None:
    with EmbeddedBroker() as broker:
        config = topics_config(broker.bootstrap_servers, request_timeout_ms=1500, flush_timeout_s=3.0,
                               producer_retries=1, client=kafka_client)
        sink = open_sink(config)
        sink.add(Route.OUTPUT, _output("a"))
        sink.flush()  # acknowledged while the broker runs
        broker.stop()
        sink.add(Route.OUTPUT, _output("b"))
        with pytest.raises(SinkWriteError, match="not"):
            sink.flush()
        sink.close()


def test_a_failed_delivery_report_names_the_record_and_fails_the_flush() -> None:
    pytest.importorskip("confluent_kafka")
    with EmbeddedBroker() as broker:  # librdkafka gives up on the send after 1 s: a report, not a flush timeout
        config = topics_config(broker.bootstrap_servers, flush_timeout_s=20.0, client="confluent",
                               client_options={"message.timeout.ms": 1000})
        sink = open_sink(config)
        sink.add(Route.OUTPUT, _output("a"))
        sink.flush()
        broker.stop()
        sink.add(Route.OUTPUT, _output("b"))
        with pytest.raises(SinkWriteError, match=r"1 of 1 records .*record 'b' to topic 'out-.*timed out"):
            sink.flush()
        sink.close()


def test_dead_letter_too_large_is_written_without_bytes_and_routes_checked(kafka_broker,  # type: ignore[no-untyped-def]
                                                                           kafka_client: str) -> None:
    config = topics_config(kafka_broker.bootstrap_servers, max_request_size=64 * 1024, client=kafka_client)
    with open_sink(config) as sink:
        sink.add_dead_letter(DeadLetter.from_exception(_record("big", b"z" * 100_000), ValueError("too big")))
        sink.add_dead_letter(DeadLetter.from_exception(_record("small", b"z"), ValueError("bad"), stage="decode"))
        sink.add(Route.QUARANTINE, _output("q"))
        with pytest.raises(ValueError, match="add_dead_letter"):
            sink.add(Route.DEAD_LETTER, _output("d"))
        sink.flush()
    dead = {m.key.decode(): m for m in read_topic(kafka_broker.bootstrap_servers, config.dead_letter_topic, expect=2)}
    big_headers = dict(dead["big"].headers)
    assert dead["big"].value == b"" and big_headers["payload.dropped"] == b"100000"
    small_headers = dict(dead["small"].headers)
    assert dead["small"].value == b"z" and small_headers["error.stage"] == b"decode"
    assert small_headers["source.file"] == b"/data/in.parquet" and small_headers["source.row"] == b"3"
    assert json.loads(small_headers["cola.metadata"]) == {"user": "u"}
    (quarantined,) = read_topic(kafka_broker.bootstrap_servers, config.quarantine_topic, expect=1)
    assert quarantined.key == b"q" and json.loads(quarantined.value)["id"] == "q"
    assert dict(quarantined.headers) == {"content-type": b"application/json",
                                         "cola.schema-version": str(SCHEMA_VERSION).encode()}
