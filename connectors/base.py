"""The two interfaces the pipeline talks to; a new connector implements one of them in ~100 lines.

Source lifecycle (one thread)::

    batch = source.poll()            # bounded by records / bytes / time; None = input exhausted (files)
    ...process batch.records, route batch.dead_letters...
    sink.add_outcome(outcome)        # one Routed | DeadLetter per input, in input order
    sink.flush(batch)                # durable: raises SinkWriteError on failure -> do NOT commit
    source.commit(batch)             # only now is the batch acknowledged upstream
    ...
    sink.close(); source.close()

:mod:`cola_moderation.pipeline.runtime.delivery` is the one implementation of this loop (with an in-flight window).
Sinks know nothing of moderation fields: they are given a :class:`RecordSerializer` for the records they write.

Delivery is at-least-once: a crash between ``flush`` and ``commit`` (or anywhere before ``commit``) re-delivers the
uncommitted batches. Not guaranteed: ``close`` runs on abort (a SIGKILL skips it; nothing is lost, only re-delivered).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, Self

import pyarrow as pa

from cola_moderation.connectors.records import Batch, DeadLetter, Outcome, Route


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

    def owns_input(self) -> bool:
        """Whether this reader currently has input assigned (a consumer-group member that owns no partition does
        not: the stream job then does not count its wait as idleness). Sources without groups always do."""
        return True

    def close(self) -> None:
        """Release connections and files. Uncommitted batches will be re-delivered to the next reader."""


class RecordSerializer(Protocol):
    """How a sink writes output records: Kafka takes :meth:`key` / :meth:`json_bytes` / :attr:`headers`, Parquet takes
    :attr:`arrow_schema` / :meth:`to_columns` / :meth:`passthrough`. One implementation per record type
    (:class:`cola_moderation.pipeline.runtime.records.OutputSerializer`)."""

    content_type: str
    """MIME type of :meth:`json_bytes`'s bytes (Kafka header ``content-type``)."""
    schema_version: str
    """Version of the record schema (Kafka header ``cola.schema-version``, Parquet key-value metadata)."""
    arrow_schema: pa.Schema
    """Columns every record has (passthrough metadata comes after them)."""

    def key(self, record: Any) -> str:
        """The record's id (Kafka key)."""
        ...

    def json_bytes(self, record: Any) -> bytes:
        """The record as a UTF-8 JSON document (Kafka value)."""
        ...

    def to_columns(self, records: list[Any]) -> dict[str, pa.Array]:
        """The :attr:`arrow_schema` columns of ``records``."""
        ...

    def passthrough(self, record: Any) -> Mapping[str, Any]:
        """The record's passthrough metadata (written as extra columns by column-oriented sinks)."""
        ...

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        """Headers every message of this record type carries."""
        ...


class Sink(Closing, ABC):
    """Buffers routed records and writes them durably on :meth:`flush`."""

    @abstractmethod
    def add(self, route: Route, record: Any) -> None:
        """Buffer one output record (of the type the sink's serializer writes) for ``Route.OUTPUT`` or
        ``Route.QUARANTINE``."""

    @abstractmethod
    def add_dead_letter(self, dead: DeadLetter) -> None:
        """Buffer one dead letter (original bytes + error fields + source position)."""

    def add_outcome(self, outcome: Outcome) -> None:
        """Buffer what became of one input: a :class:`Routed` record or a :class:`DeadLetter`."""
        if isinstance(outcome, DeadLetter):
            self.add_dead_letter(outcome)
        else:
            self.add(outcome.route, outcome.record)

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
