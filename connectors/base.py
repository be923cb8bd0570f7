"""The two interfaces the pipeline talks to; a new connector implements one of them in ~100 lines.

Source lifecycle (one thread)::

    batch = source.poll()            # bounded by records / bytes / time; None = input exhausted (files)
    ...process batch.records, route batch.dead_letters...
    sink.add(route, record) / sink.add_dead_letter(dead)
    sink.flush(batch)                # durable: raises SinkWriteError on failure -> do NOT commit
    source.commit(batch)             # only now is the batch acknowledged upstream
    ...
    sink.close(); source.close()

Delivery is at-least-once: a crash between ``flush`` and ``commit`` (or anywhere before ``commit``) re-delivers the
uncommitted batches. Not guaranteed: ``close`` runs on abort (a SIGKILL skips it; nothing is lost, only re-delivered).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from cola_moderation.connectors.records import Batch, DeadLetter, Route


class Closing:
    """``with connector: ...`` closes it on the way out (also on errors)."""

    def close(self) -> None:
        """Release resources."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Source(Closing, ABC):
    """Produces bounded :class:`Batch` es and takes acknowledgements for them."""

    @abstractmethod
    def poll(self) -> Batch | None:
        """Return the next batch: at most the configured records and bytes (a batch may go over the byte limit by one
        input), waiting at most the configured time (an unbounded source may return an empty batch). ``None`` means
        a finite source is exhausted. Inputs that cannot become records are in ``batch.dead_letters``."""

    @abstractmethod
    def commit(self, batch: Batch) -> None:
        """Acknowledge ``batch`` after the sink flushed it; a restarted source will not deliver it again."""

    def pause(self) -> None:
        """Backpressure: stop fetching (``poll`` keeps the session alive and returns empty batches)."""

    def resume(self) -> None:
        """Undo :meth:`pause`."""

    def close(self) -> None:
        """Release connections and files. Uncommitted batches will be re-delivered to the next reader."""


class Sink(Closing, ABC):
    """Buffers routed records and writes them durably on :meth:`flush`."""

    @abstractmethod
    def add(self, route: Route, record: Mapping[str, Any]) -> None:
        """Buffer one output record (JSON-able dict with an ``id``) for ``Route.OUTPUT`` or ``Route.QUARANTINE``."""

    @abstractmethod
    def add_dead_letter(self, dead: DeadLetter) -> None:
        """Buffer one dead letter (original bytes + error fields + source position)."""

    @abstractmethod
    def flush(self, batch: Batch) -> None:
        """Durably write everything added since the last flush, as the outputs of ``batch``; raise
        :class:`~cola_moderation.connectors.errors.SinkWriteError` if anything was not written. Buffers are cleared
        either way."""

    def close(self) -> None:
        """Release resources. Does not flush: unflushed records belong to uncommitted batches."""


def check_route(route: Route) -> None:
    """Sinks call this in ``add``: dead letters go through ``add_dead_letter``."""
    if not isinstance(route, Route) or route is Route.DEAD_LETTER:
        raise ValueError(f"add() takes Route.OUTPUT or Route.QUARANTINE, got {route!r}; "
                         "use add_dead_letter() for dead letters")
