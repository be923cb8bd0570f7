"""Connector config sections: defaults from DESIGN.md, validation messages naming the key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cola_moderation.connectors.config import KafkaConfig, ParquetConfig


def test_defaults() -> None:
    kafka = KafkaConfig()
    assert (kafka.session_timeout_ms, kafka.heartbeat_interval_ms) == (6000, 1500)
    assert kafka.max_request_size >= 5 * 1024 * 1024 and kafka.max_partition_fetch_bytes >= 5 * 1024 * 1024
    assert ParquetConfig().id_column == "id" and ParquetConfig().image_column == "image"
    assert kafka.guarantee == "at_least_once"  # exactly_once is opt-in: it costs throughput and needs read_committed


def test_client_options_pass_through_untouched() -> None:
    options = {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u"}
    assert KafkaConfig(client_options=options).client_options == options


@pytest.mark.parametrize(("values", "message"), [
    ({"heartbeat_interval_ms": 3000}, "at most a third of session_timeout_ms"),
    ({"input_topics": ["cola.output"]}, "must not contain the output"),
    ({"value_format": "avro"}, "value_format"),
    ({"bootstrap": "x"}, "bootstrap"),
    ({"guarantee": "exactly-once"}, "guarantee"),
    ({"guarantee": "exactly_once", "client_options": {"isolation_level": "read_uncommitted"}},
     r"client_options \['isolation_level'\] conflict with guarantee: exactly_once"),
    ({"transaction_timeout_ms": 10}, "transaction_timeout_ms"),
    ({"client": "librdkafka"}, "client"),
    ({"commit_batches": 0}, "commit_batches"),
    ({"guarantee": "exactly_once", "commit_batches": 4, "commit_interval_ms": 40_000},
     r"commit_interval_ms \(40000\) must be at most half of transaction_timeout_ms \(60000\)"),
    ({"client": "confluent", "guarantee": "exactly_once", "client_options": {"transactional.id": "x"}},
     r"client_options \['transactional.id'\] conflict with guarantee: exactly_once"),
])
def test_rejects(values: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaConfig(**values)


def test_client_defaults_to_kafka_python_and_accepts_confluent() -> None:
    assert KafkaConfig().client == "kafka-python"
    assert KafkaConfig(client="confluent").client == "confluent"  # confluent-kafka is installed with the test extra
