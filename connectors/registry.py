"""The stream job's connectors by name (``stream.source`` in the config): how one consumer-group member opens its
source and sink.

A new streaming source is one folder under ``connectors/`` (a :class:`~cola_moderation.connectors.base.Source` and a
:class:`~cola_moderation.connectors.base.Sink`, plus an opener) and one line in :data:`STREAM_CONNECTORS`. The batch
job reads Parquet through Ray Data (:mod:`cola_moderation.connectors.parquet`); the HTTP path takes request bodies.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from cola_moderation.connectors.base import RecordSerializer, Sink, Source
from cola_moderation.operators.config import one_of
from cola_moderation.operators.errors import ConfigError


class Opener(Protocol):
    def __call__(self, settings: Any, serializer: RecordSerializer, *, bootstrap_servers: str | None = None,
                 member: str = ...) -> tuple[Source, Sink]: ...


@dataclass(frozen=True)
class StreamConnector:
    """``section``: the pipeline config section holding the connector's settings (e.g. ``kafka``); ``opener``:
    ``module:function`` building one member's ``(source, sink)``, imported on first use (the client library is
    only needed where the connector runs)."""

    name: str
    section: str
    opener: str

    def open(self, settings: Any, serializer: RecordSerializer, *, bootstrap_servers: str | None = None,
             member: str) -> tuple[Source, Sink]:
        module, _, function = self.opener.partition(":")
        opener: Opener = getattr(importlib.import_module(module), function)
        return opener(settings, serializer, bootstrap_servers=bootstrap_servers, member=member)


STREAM_CONNECTORS: dict[str, StreamConnector] = {
    "kafka": StreamConnector("kafka", section="kafka",
                             opener="cola_moderation.connectors.kafka.transactions:open_kafka"),
}


def stream_connector(name: str) -> StreamConnector:
    """The registered connector ``name``; a :class:`ConfigError` naming ``stream.source`` otherwise."""
    try:
        return STREAM_CONNECTORS[name]
    except KeyError:
        raise ConfigError(f"stream.source: {one_of(name, STREAM_CONNECTORS)}") from None
