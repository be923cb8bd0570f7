"""kafka-python's log records that are not what they say.

kafka-python 3 logs ``ERROR kafka.cluster: Metadata refresh: failed Cancelled`` when a client is closed while a
metadata request is in flight: the request is cancelled by the close, nothing failed (its fetcher logs the same
cancellation at INFO). Seen at the end of ``cola demo --stream`` when the results are read back. The filter drops
exactly those records; every other metadata failure still logs as kafka-python logs it.
"""

from __future__ import annotations

import logging

_METADATA_FAILED = "Metadata refresh: failed %s"


class CancelledRefreshFilter(logging.Filter):
    """Drops kafka.cluster's "Metadata refresh: failed" records whose cause is a cancellation."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _METADATA_FAILED or not isinstance(record.args, tuple) or not record.args:
            return True
        from kafka.errors import Cancelled

        return not isinstance(record.args[0], Cancelled)


def quiet_cancelled_refreshes() -> None:
    """Install :class:`CancelledRefreshFilter` on the ``kafka.cluster`` logger (idempotent)."""
    logger = logging.getLogger("kafka.cluster")
    if not any(isinstance(f, CancelledRefreshFilter) for f in logger.filters):
        logger.addFilter(CancelledRefreshFilter())
