"""The Kafka cluster a stream job's members connect to, as the stream job checks it (see
:class:`~cola_moderation.connectors.registry.Endpoint`): before Ray starts (:meth:`KafkaEndpoint.check`, a TCP connect
and a metadata request, one line naming the setting when nothing answers) and while a member waits for input
(:meth:`KafkaEndpoint.reachable`, a TCP connect)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cola_moderation.connectors.config import KafkaConfig
from cola_moderation.connectors.errors import BrokerError
from cola_moderation.operators.errors import ConfigError

SETTING = "kafka.bootstrap_servers"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KafkaEndpoint:
    """``bootstrap_servers``: comma-separated ``HOST:PORT`` (``--bootstrap`` or ``kafka.bootstrap_servers``)."""

    bootstrap_servers: str
    transactional: bool = False
    """``kafka.guarantee: exactly_once``: a failed write aborts its transaction and the batch is read again."""
    join_grace_s: float = 12.0
    """Two session timeouts: how long a member may go without partitions before its idle time counts."""
    config: KafkaConfig | None = field(default=None, repr=False, compare=False)
    """The settings the members open with (their transactional ids, for :meth:`prepare`)."""

    @classmethod
    def of(cls, config: KafkaConfig, *, bootstrap_servers: str | None = None) -> KafkaEndpoint:
        return cls(bootstrap_servers or config.bootstrap_servers, transactional=config.guarantee == "exactly_once",
                   join_grace_s=2 * config.session_timeout_ms / 1000, config=config)

    @property
    def description(self) -> str:
        return f"Kafka broker at {self.bootstrap_servers}"

    def check(self, *, timeout_s: float = 10.0) -> None:
        """Raise :class:`BrokerError` unless a Kafka broker answers at one of the addresses within ``timeout_s``
        (TCP connect, then a metadata request); :class:`ConfigError` for an address that is not ``HOST:PORT``."""
        addresses = [item.strip() for item in self.bootstrap_servers.split(",") if item.strip()]
        if not addresses:
            raise ConfigError(f"{SETTING} is empty")
        deadline = time.monotonic() + timeout_s
        errors = []
        for address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"{SETTING}: {address!r} is not HOST:PORT")
            try:
                with socket.create_connection((host.strip("[]"), int(port)),
                                              timeout=max(0.5, deadline - time.monotonic())):
                    pass
            except OSError as exc:
                errors.append(f"{address}: {exc.strerror or exc}")
                continue
            if answers_metadata(address, max(1.0, deadline - time.monotonic())):
                return
            errors.append(f"{address}: accepts connections but does not answer as a Kafka broker")
        raise BrokerError(f"cannot reach the Kafka broker at {self.bootstrap_servers} ({SETTING} / --bootstrap): "
                          + "; ".join(errors))

    def reachable(self, *, timeout_s: float = 1.0) -> str | None:
        """``None`` when one of the addresses accepts a TCP connection, else why none did (one line)."""
        errors = []
        for address in (item.strip() for item in self.bootstrap_servers.split(",") if item.strip()):
            host, _, port = address.rpartition(":")
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                    return None
            except (OSError, ValueError) as exc:
                errors.append(f"{address}: {getattr(exc, 'strerror', None) or exc}")
        return "; ".join(errors) or "no address"

    def prepare(self, members: Sequence[str]) -> None:
        """``exactly_once``: fence the members' transactional ids before any of them joins the group
        (:func:`~cola_moderation.connectors.kafka.transactions.fence_transactional_ids` says why); otherwise
        nothing."""
        if not self.transactional or not members or self.config is None:
            return
        from cola_moderation.connectors.kafka.transactions import fence_transactional_ids, transactional_id

        started = time.monotonic()
        ids = [transactional_id(self.config, member) for member in members]
        fence_transactional_ids(self.bootstrap_servers, ids)
        log.info("fenced the transactional ids %s in %.2f s", ids, time.monotonic() - started)


def answers_metadata(address: str, timeout_s: float) -> bool:
    """Whether the broker at ``address`` answers a metadata request within ``timeout_s``."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(bootstrap_servers=[address], enable_auto_commit=False,  # no group: no warning
                                 request_timeout_ms=int(timeout_s * 1000),
                                 session_timeout_ms=min(6000, int(timeout_s * 1000) - 1),
                                 heartbeat_interval_ms=min(1500, int(timeout_s * 1000) // 4))
    except (KafkaError, OSError, ValueError):
        return False
    try:
        consumer.topics()
        return True
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        consumer.close()


def kafka_endpoint(config: KafkaConfig, *, bootstrap_servers: str | None = None) -> KafkaEndpoint:
    """The registry's endpoint factory for the ``kafka`` connector."""
    return KafkaEndpoint.of(config, bootstrap_servers=bootstrap_servers)
