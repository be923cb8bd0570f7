"""The records that flow between sources, the pipeline and sinks.

* :class:`InputRecord` - one upload as a source read it: ``id``, the image ``payload`` bytes, passthrough
  ``metadata`` (JSON-able: other Parquet columns, JSON-envelope fields, Kafka headers decoded as text) and the
  ``source`` position (:class:`KafkaPosition`, :class:`FilePosition` or :class:`HttpPosition`).
* :class:`DeadLetter` - an input that produced no output, with the error that stopped it.
* :class:`Route` - where a processed record goes.
* :class:`Routed` - an output record and its route (``OUTPUT`` or ``QUARANTINE``). The record type belongs to the
  pipeline (:class:`cola_moderation.pipeline.runtime.records.OutputRecord`); sinks turn it into bytes or columns through
  the
  :class:`~cola_moderation.connectors.base.RecordSerializer` they were given.
* :data:`Outcome` - ``Routed | DeadLetter``: what processing makes of one input. A processor returns exactly one
  outcome per input, in input order.
* :class:`Batch` - what :meth:`cola_moderation.connectors.base.Source.poll` returns: records, the source-stage dead
  letters, a stable ``key`` (file sinks name their part files after it) and an opaque commit position.

Every input ends in exactly one of output / quarantine / dead-letter.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pyarrow as pa

from cola_moderation.operators.errors import error_fields

Headers = tuple[tuple[str, bytes], ...]
"""Kafka headers in arrival order (keys may repeat)."""


@dataclass(frozen=True, slots=True)
class KafkaPosition:
    """Where a Kafka message came from."""

    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    def default_id(self) -> str:
        """``topic:partition:offset``: the id of a message that has none."""
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class FilePosition:
    """Where a Parquet row came from: the input file as given (resolved path) and the 0-based row in that file."""

    file: str
    row: int

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row}

    def default_id(self) -> str:
        """``file:row``: the id of a row that has none."""
        return f"{self.file}:{self.row}"


@dataclass(frozen=True, slots=True)
class HttpPosition:
    """Where an HTTP upload came from: the request id (the client's ``X-Request-ID``, else one the server made)."""

    request: str

    def as_dict(self) -> dict[str, Any]:
        return {"request": self.request}

    def default_id(self) -> str:
        """``http:request``: the id of an upload that has none."""
        return f"http:{self.request}"


SourcePosition = KafkaPosition | FilePosition | HttpPosition

SOURCE_ARROW_TYPE = pa.struct([("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
                               ("file", pa.string()), ("row", pa.int64()), ("request", pa.string())])
"""A :data:`SourcePosition` as an Arrow struct (the fields a position does not have are null)."""


def source_array(positions: list[SourcePosition]) -> pa.Array:
    """``positions`` as a :data:`SOURCE_ARROW_TYPE` array."""
    return pa.array([p.as_dict() for p in positions], type=SOURCE_ARROW_TYPE)


def file_source_array(files: pa.Array | pa.ChunkedArray, rows: pa.Array | pa.ChunkedArray) -> pa.Array:
    """File positions given as columns (``files`` string, ``rows`` integer) as a :data:`SOURCE_ARROW_TYPE` array:
    the same values as ``source_array([FilePosition(f, r), ...])`` without building the positions."""
    files, rows = (pa.chunked_array([c]) if isinstance(c, pa.Array) else c for c in (files, rows))
    n = len(files)
    arrays = {"file": files.combine_chunks().cast(pa.string()), "row": rows.combine_chunks().cast(pa.int64())}
    return pa.StructArray.from_arrays([arrays.get(f.name, pa.nulls(n, f.type)) for f in SOURCE_ARROW_TYPE],
                                      fields=list(SOURCE_ARROW_TYPE))


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One input: ``payload`` is the image bytes; ``metadata`` is JSON-able passthrough; ``headers`` are the raw Kafka
    headers (empty for files), kept byte-exact for dead letters."""

    id: str
    payload: bytes
    metadata: Mapping[str, Any]
    source: SourcePosition
    headers: Headers = ()


class Route(enum.Enum):
    """Destination of a record. ``QUARANTINE`` is an output route chosen by the policy action; ``DEAD_LETTER`` is for
    inputs that produced no output (sinks take those as :class:`DeadLetter`, via ``Sink.add_dead_letter``)."""

    OUTPUT = "output"
    QUARANTINE = "quarantine"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that produced no output. ``record.payload`` is the original bytes: the message value as received
    for source-stage failures (e.g. a malformed JSON envelope), the image bytes for later stages."""

    record: InputRecord
    error_class: str
    error_message: str
    error_stage: str

    @classmethod
    def from_exception(cls, record: InputRecord, exc: BaseException, *, stage: str | None = None) -> DeadLetter:
        """Dead letter for ``record`` failed by ``exc``; ``stage`` defaults to the exception's own ``stage``."""
        fields = error_fields(exc, stage=stage)
        return cls(record, fields["error.class"], fields["error.message"], fields["error.stage"])

    def error_fields(self) -> dict[str, str]:
        return {"error.class": self.error_class, "error.message": self.error_message,
                "error.stage": self.error_stage}


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Routed(Generic[R]):
    """An output record and the route the policy chose for it (``Route.OUTPUT`` or ``Route.QUARANTINE``)."""

    route: Route
    record: R


Outcome = Routed[Any] | DeadLetter
"""What became of one input: an output record on a route, or a dead letter."""


@dataclass(frozen=True, slots=True)
class Batch:
    """A bounded batch from a source. ``records`` and ``dead_letters`` together hold every input the batch covers;
    committing the batch acknowledges all of them. ``key`` is stable across reruns for file sources (Kafka: a
    description, not stable). ``position`` is the source's opaque commit token."""

    key: str
    records: tuple[InputRecord, ...]
    dead_letters: tuple[DeadLetter, ...] = ()
    position: Any = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.records) + len(self.dead_letters)

    @property
    def nbytes(self) -> int:
        return sum(len(r.payload) for r in self.records) + sum(len(d.record.payload) for d in self.dead_letters)
