"""The stream job's connectors by name (``stream.source`` in the config): how one consumer-group member opens its
source and sink.

A new streaming source is one folder under ``connectors/`` (a :class:`~cola_moderation.connectors.base.Source` and a
:class:`~cola_moderation.connectors.base.Sink`, an opener and an :class:`Endpoint`) and one line in
:data:`STREAM_CONNECTORS`. The batch
job reads Parquet through Ray Data (:mod:`cola_moderation.connectors.parquet`); the HTTP path takes request bodies.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cola_moderation.connectors.base import RecordSerializer, Sink, Source
from cola_moderation.operators.config import one_of
from cola_moderation.operators.errors import ConfigError


class Endpoint(Protocol):
    """What a stream connector's members connect to (a Kafka cluster, ...), as the stream job checks it."""

    @property
    def description(self) -> str:
        """Names it in errors, e.g. ``Kafka broker at 127.0.0.1:9092``."""

    @property
    def transactional(self) -> bool:
        """Whether the sink's flush commits outputs and source positions atomically (then a failed write is the
        delivery loop's to abort and re-read, not the job's to retry)."""

    @property
    def join_grace_s(self) -> float:
        """How long a member may wait for its share of the input before its idle time counts."""

    def check(self, *, timeout_s: float = 10.0) -> None:
        """Raise a one-line :class:`~cola_moderation.connectors.errors.BrokerError` (or ``ConfigError`` for a bad
        address) unless it answers within ``timeout_s``: run before Ray starts."""

    def reachable(self, *, timeout_s: float = 1.0) -> str | None:
        """``None`` when it accepts connections, else why not (one line): polled while no input arrives."""

    def prepare(self, members: Sequence[str]) -> None:
        """Before the job's ``members`` (their names, as given to the opener) start: end what an earlier run of
        the same members left unfinished (Kafka exactly-once: fence their transactional ids), so that no member
        reads a position another member's predecessor still holds back."""


class Opener(Protocol):
    def __call__(self, settings: Any, serializer: RecordSerializer, *, bootstrap_servers: str | None = None,
                 member: str = ...) -> tuple[Source, Sink]: ...


@dataclass(frozen=True)
class StreamConnector:
    """``section``: the pipeline config section holding the connector's settings (e.g. ``kafka``); ``opener``:
    ``module:function`` building one member's ``(source, sink)``, imported on first use (the client library is
    only needed where the connector runs); ``endpoint``: ``module:function`` giving the :class:`Endpoint` of
    ``(settings, *, bootstrap_servers)``."""

    name: str
    section: str
    opener: str
    endpoint_factory: str

    def open(self, settings: Any, serializer: RecordSerializer, *, bootstrap_servers: str | None = None,
             member: str) -> tuple[Source, Sink]:
        module, _, function = self.opener.partition(":")
        opener: Opener = getattr(importlib.import_module(module), function)
        return opener(settings, serializer, bootstrap_servers=bootstrap_servers, member=member)

    def endpoint(self, settings: Any, *, bootstrap_servers: str | None = None) -> Endpoint:
        module, _, function = self.endpoint_factory.partition(":")
        endpoint: Endpoint = getattr(importlib.import_module(module), function)(
            settings, bootstrap_servers=bootstrap_servers)
        return endpoint


STREAM_CONNECTORS: dict[str, StreamConnector] = {
    "kafka": StreamConnector("kafka", section="kafka",
                             opener="cola_moderation.connectors.kafka.transactions:open_kafka",
                             endpoint_factory="cola_moderation.connectors.kafka.endpoint:kafka_endpoint"),
}


def stream_connector(name: str) -> StreamConnector:
    """The registered connector ``name``; a :class:`ConfigError` naming ``stream.source`` otherwise."""
    try:
        return STREAM_CONNECTORS[name]
    except KeyError:
        raise ConfigError(f"stream.source: {one_of(name, STREAM_CONNECTORS)}") from None
