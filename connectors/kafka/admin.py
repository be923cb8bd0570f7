"""Topic creation for tests, the demo and local development (production topics are usually made by operators)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from cola_moderation.connectors.errors import BrokerError


def ensure_topics(bootstrap_servers: str, partitions: Mapping[str, int], *, timeout_s: float = 20.0,
                  client_options: Mapping[str, Any] | None = None) -> None:
    """Create each topic of ``partitions`` (name -> partition count, replication 1) that does not exist yet, and wait
    until the broker lists them. Existing topics are left as they are, whatever their partition count."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers.split(","), client_id="cola-admin",
                             **dict(client_options or {}))
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, count, 1) for name, count in partitions.items() if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently
                admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
        deadline = time.monotonic() + timeout_s
        while not set(partitions) <= set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise BrokerError(f"topics {sorted(set(partitions) - set(admin.list_topics()))} did not appear on "
                                  f"{bootstrap_servers} within {timeout_s:.0f} s")
            time.sleep(0.05)
    except KafkaError as exc:
        raise BrokerError(f"cannot create topics {sorted(partitions)} on {bootstrap_servers}: {exc}") from exc
    finally:
        admin.close()
