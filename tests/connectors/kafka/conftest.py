"""The Kafka suites run once per client library (``kafka.client``), against the same broker, with the same peer
checks (kafka-python and confluent-kafka readers)."""

from __future__ import annotations

import pytest

CLIENTS = ("kafka-python", "confluent")


@pytest.fixture(params=CLIENTS)
def kafka_client(request: pytest.FixtureRequest) -> str:
    """``kafka.client`` of the source and sink under test."""
    if request.param == "confluent":
        pytest.importorskip("confluent_kafka")
    return str(request.param)
