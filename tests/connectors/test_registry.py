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


def test_kafka_endpoint_checks_the_real_broker(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    import socket

    from cola_moderation.connectors.errors import BrokerError
    from cola_moderation.pipeline.jobs.stream import stream_endpoint

    config = parse_config({"taxonomy": TAXONOMY, "kafka": {"bootstrap_servers": kafka_broker.bootstrap_servers,
                                                             "guarantee": "exactly_once", "session_timeout_ms": 7000}})
    endpoint = stream_endpoint(config)
    assert endpoint.description == f"Kafka broker at {kafka_broker.bootstrap_servers}"
    assert endpoint.transactional and endpoint.join_grace_s == 14.0
    endpoint.check(timeout_s=10)  # a real metadata answer
    assert endpoint.reachable() is None

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    down = stream_endpoint(config, bootstrap_servers=closed)  # --bootstrap overrides the setting
    assert down.description == f"Kafka broker at {closed}"
    problem = down.reachable()
    assert problem is not None and problem.startswith(closed) and "\n" not in problem
    with pytest.raises(BrokerError, match=rf"cannot reach the Kafka broker at {closed} \(kafka.bootstrap_servers"):
        down.check(timeout_s=2)
    with pytest.raises(ConfigError, match=r"kafka.bootstrap_servers: 'nohost' is not HOST:PORT"):
        stream_endpoint(config, bootstrap_servers="nohost").check(timeout_s=1)
    plain = parse_config({"taxonomy": TAXONOMY, "kafka": {"bootstrap_servers": closed}})
    assert not stream_endpoint(plain).transactional
