"""Connector errors. All derive from :class:`~cola_moderation.operators.errors.ColaError` and carry the stage they
belong to."""

from __future__ import annotations

from cola_moderation.operators.errors import ColaError


class MalformedRecordError(ColaError, ValueError):
    """An input message or row cannot be turned into an :class:`~cola_moderation.connectors.records.InputRecord` (bad
    JSON envelope, missing or unreadable image). Sources route it to the dead-letter stream; it never stops a stream."""

    stage = "source"


class SinkWriteError(ColaError, RuntimeError):
    """A sink could not durably write a batch. The caller must not commit the batch's source position."""

    stage = "sink"


class BrokerError(ColaError, RuntimeError):
    """The embedded broker could not be found, started or reached."""

    stage = "setup"


class TransactionAbortedError(SinkWriteError):
    """``exactly_once``: a batch's transaction was aborted (a write failed, or the batch went stale in a rebalance or
    an earlier abort). None of its outputs or offsets are committed and the source was rewound to the committed
    offsets: drop the batches in flight and poll again."""


class TransactionFencedError(SinkWriteError):
    """``exactly_once``: another producer with this consumer's ``transactional_id`` started (a restarted or duplicate
    consumer), so this one is a zombie: nothing it writes becomes visible. Stop the consumer."""
