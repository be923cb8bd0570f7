"""Connector errors. All derive from :class:`~cola_moderation.operators.errors.ColaError` and carry the stage they
belong to."""

from __future__ import annotations

from cola_moderation.operators.errors import ColaError


class MalformedRecordError(ColaError, ValueError):
    """An input message or row cannot be turned into an :class:`~cola_moderation.connectors.records.InputRecord` (bad
    JSON
    envelope, missing or unreadable image). Sources route it to the dead-letter stream; it never stops a stream."""

    stage = "source"


class SinkWriteError(ColaError, RuntimeError):
    """A sink could not durably write a batch. The caller must not commit the batch's source position."""

    stage = "sink"


class BrokerError(ColaError, RuntimeError):
    """The embedded broker could not be found, started or reached."""

    stage = "setup"
