"""Test helpers: fresh topics per test (produce/read_topic live in cola_moderation.connectors.local.kafka_tools)."""

from __future__ import annotations

import uuid
from typing import Any

from cola_moderation.connectors.config import KafkaConfig
from cola_moderation.connectors.kafka.admin import ensure_topics
from cola_moderation.connectors.local.kafka_tools import produce, read_topic

__all__ = ["produce", "read_topic", "topics_config"]


def topics_config(bootstrap: str, *, partitions: int = 1, **overrides: Any) -> KafkaConfig:
    """A KafkaConfig with fresh topic and group names (created on the broker)."""
    tag = uuid.uuid4().hex[:8]
    config = KafkaConfig(bootstrap_servers=bootstrap, input_topics=(f"in-{tag}",), output_topic=f"out-{tag}",
                         quarantine_topic=f"quarantine-{tag}", dead_letter_topic=f"dead-{tag}", group_id=f"g-{tag}",
                         **overrides)
    ensure_topics(bootstrap, {config.input_topics[0]: partitions, config.output_topic: 1,
                              config.quarantine_topic: 1, config.dead_letter_topic: 1})
    return config


def transactional_sink_class(client: str) -> type:
    """The exactly-once sink class of ``kafka.client`` ``client``."""
    if client == "confluent":
        from cola_moderation.connectors.kafka.confluent import ConfluentTransactionalSink

        return ConfluentTransactionalSink
    from cola_moderation.connectors.kafka.transactions import TransactionalKafkaSink

    return TransactionalKafkaSink
