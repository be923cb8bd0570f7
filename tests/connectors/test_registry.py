"""The stream connectors' registry: names, config validation, and opening a real member on the embedded broker."""

from __future__ import annotations

import time

import pytest

from cola_moderation.connectors.kafka.sink import KafkaSink
from cola_moderation.connectors.kafka.source import KafkaSource
from cola_moderation.connectors.registry import STREAM_CONNECTORS, stream_connector
from cola_moderation.operators.errors import ConfigError
from cola_moderation.pipeline.runtime.config import parse_config
from cola_moderation.pipeline.runtime.records import OutputSerializer
from tests.connectors.kafka_util import topics_config

TAXONOMY = {"labels": [{"name": "cat"}, {"name": "dog"}]}


def test_unknown_connector_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"stream.source: must be one of kafka, got 'pulsar'"):
        stream_connector("pulsar")
    with pytest.raises(ConfigError, match=r"stream.source: .*must be one of kafka, got 'pulsar'"):
        parse_config({"taxonomy": TAXONOMY, "stream": {"source": "pulsar"}})
    assert parse_config({"taxonomy": TAXONOMY}).stream.source == "kafka"


def test_every_connector_names_an_existing_config_section() -> None:
    config = parse_config({"taxonomy": TAXONOMY})
    for connector in STREAM_CONNECTORS.values():
        assert getattr(config, connector.section) is not None


def test_kafka_connector_opens_a_member(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    kafka = topics_config(kafka_broker.bootstrap_servers)
    source, sink = stream_connector("kafka").open(kafka, OutputSerializer(), member="registry-test")
    try:
        assert isinstance(source, KafkaSource) and isinstance(sink, KafkaSink)
        assert not source.owns_input()  # before the group join
        deadline = time.monotonic() + 60
        while not source.owns_input() and time.monotonic() < deadline:
            source.poll()
        assert source.owns_input() and source.assignment()  # the only member owns the input partition
    finally:
        sink.close()
        source.close()
