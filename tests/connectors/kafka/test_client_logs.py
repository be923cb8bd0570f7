"""kafka-python's cancelled metadata refresh (a client closed mid-request) is not logged as an error; real failures
still are."""

from __future__ import annotations

import logging

import pytest
from kafka.errors import Cancelled, KafkaConnectionError

import cola_moderation.connectors.kafka  # noqa: F401 - installs the filter, as every Kafka code path does


def test_a_cancelled_refresh_is_dropped_and_a_failed_one_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    cluster = logging.getLogger("kafka.cluster")
    with caplog.at_level(logging.DEBUG, logger="kafka.cluster"):
        cluster.error("Metadata refresh: failed %s", Cancelled())
        cluster.error("Metadata refresh: failed %s", KafkaConnectionError("connection refused"))
        cluster.error("Metadata refresh loop error: %s", Cancelled())
    messages = [record.getMessage() for record in caplog.records if record.name == "kafka.cluster"]
    assert messages == ["Metadata refresh: failed KafkaConnectionError: connection refused",
                        "Metadata refresh loop error: Cancelled"]
