"""The delivery loop: source -> process -> sink -> flush-then-commit, with a window of batches in flight.

One implementation serves the stream job (processing = a Ray Serve call) and the connector tests (processing in
the calling thread)::

    loop = DeliveryLoop(source, sink, submit, max_in_flight=3)
    loop.run(stop=lambda state: state.committed_inputs >= 1000)

Per batch, in poll order: ``submit(batch)`` starts processing and returns a :class:`Pending`; once its
:meth:`Pending.result` (one :data:`Outcome` per record, in record order) is in, the batch's source dead letters and
outcomes go to the sink, then ``commit(batch)`` runs - by default ``sink.flush(batch)`` followed by
``source.commit(batch)``, so a batch is acknowledged only after the sink has it. A source/sink pair that must do
both at once (e.g. a transactional Kafka producer that commits the consumer offsets inside its transaction) passes
its own ``commit``. Processing failures surface from :meth:`DeliveryLoop.outcomes`, the one place that waits for a
batch's result (a retry policy would re-``submit`` the batch there); nothing is written or committed for a batch
whose processing failed.

Stopping: ``stop(state)`` is asked before every poll; once it says so, or the source is exhausted (``poll`` returns
``None``), the batches in flight are finished, written and committed, and :meth:`DeliveryLoop.run` returns. An
exception (sink write failure, processing failure) leaves the batches not yet committed uncommitted: a restart
re-delivers them (at-least-once). The one exception the loop handles is
:class:`~cola_moderation.connectors.errors.TransactionAbortedError` (exactly_once): the source was rewound, so the
batches in flight are dropped and their records polled again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cola_moderation.connectors.base import Sink, Source
from cola_moderation.connectors.errors import TransactionAbortedError
from cola_moderation.connectors.records import Batch, Outcome

log = logging.getLogger(__name__)


class Pending(Protocol):
    """A batch's processing, started. ``ready`` never blocks; ``result`` blocks and raises what processing
    raised."""

    def ready(self) -> bool: ...

    def result(self) -> Sequence[Outcome]: ...


@dataclass
class Done:
    """A :class:`Pending` whose outcomes are already known (processing ran in the calling thread)."""

    outcomes: Sequence[Outcome]

    def ready(self) -> bool:
        return True

    def result(self) -> Sequence[Outcome]:
        return self.outcomes


@dataclass
class InFlight:
    """A batch submitted for processing; ``attempt`` counts submissions (1 for the first)."""

    batch: Batch
    pending: Pending
    attempt: int = 1


@dataclass
class LoopState:
    """What the loop has done so far, for ``stop`` predicates and progress reports."""

    committed_batches: int = 0
    committed_inputs: int = 0
    in_flight: deque[InFlight] = field(default_factory=deque)
    started: float = field(default_factory=time.monotonic)
    last_input: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` of the last poll that returned inputs (or of the start)."""
    first_input: float | None = None
    last_commit: float | None = None
    aborted_batches: int = 0
    """exactly_once: batches dropped after an aborted transaction (their records were polled again)."""

    @property
    def pending_inputs(self) -> int:
        """Inputs polled but not yet committed."""
        return sum(len(item.batch) for item in self.in_flight)


class DeliveryLoop:
    """Drive ``source`` -> ``submit`` -> ``sink`` in poll order with at most ``max_in_flight`` batches in flight.

    ``submit(batch)`` starts processing ``batch.records`` (never called for a batch without records).
    ``commit(batch)`` makes the written batch durable and acknowledges it (default: flush, then commit).
    ``on_committed(batch, outcomes)`` runs after each commit (counting, logging). The loop does not close the
    source or the sink.
    """

    def __init__(self, source: Source, sink: Sink, submit: Callable[[Batch], Pending], *, max_in_flight: int = 1,
                 commit: Callable[[Batch], None] | None = None,
                 on_committed: Callable[[Batch, Sequence[Outcome]], None] | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.source = source
        self.sink = sink
        self.submit = submit
        self.max_in_flight = max_in_flight
        self.commit = commit or self.flush_then_commit
        self.on_committed = on_committed
        self.state = LoopState()

    def flush_then_commit(self, batch: Batch) -> None:
        """The default commit step: the sink flushes (raises ``SinkWriteError`` -> no commit), then the source
        acknowledges."""
        self.sink.flush(batch)
        self.source.commit(batch)

    def run(self, stop: Callable[[LoopState], bool] | None = None) -> LoopState:
        """Poll, process and write until ``stop(state)`` or the source is exhausted; finish what is in flight."""
        state = self.state
        in_flight = state.in_flight
        while stop is None or not stop(state):
            batch = self.source.poll()
            if batch is None:
                break
            if len(batch):
                state.last_input = time.monotonic()
                if state.first_input is None:
                    state.first_input = state.last_input
                in_flight.append(InFlight(batch, self.submit(batch) if batch.records else Done(())))
            # write finished batches in poll order; wait for the oldest when the window is full
            while in_flight and (len(in_flight) >= self.max_in_flight or in_flight[0].pending.ready()):
                self.write_oldest()
        while in_flight:  # stopping: finish what was submitted, commit what was written
            self.write_oldest()
        return state

    def write_oldest(self) -> None:
        """Write and commit the oldest batch in flight. If its transaction was aborted (exactly_once), the source
        has been rewound to the committed offsets: every batch in flight is dropped and polled again."""
        in_flight = self.state.in_flight
        try:
            self.write(in_flight[0])
        except TransactionAbortedError as exc:
            log.warning("%s; dropping %d batches in flight, they are polled again", exc, len(in_flight))
            self.state.aborted_batches += len(in_flight)
            in_flight.clear()
            return
        in_flight.popleft()

    def outcomes(self, item: InFlight) -> Sequence[Outcome]:
        """Wait for ``item``'s outcomes (one per record, in order); raises what processing raised."""
        outcomes = item.pending.result()
        if len(outcomes) != len(item.batch.records):
            raise RuntimeError(f"batch {item.batch.key}: processing returned {len(outcomes)} outcomes for "
                               f"{len(item.batch.records)} records")
        return outcomes

    def write(self, item: InFlight) -> None:
        """Write ``item``'s source dead letters and outcomes, then commit the batch."""
        outcomes = self.outcomes(item)
        batch = item.batch
        for dead in batch.dead_letters:
            self.sink.add_dead_letter(dead)
        for outcome in outcomes:
            self.sink.add_outcome(outcome)
        self.commit(batch)
        self.state.committed_batches += 1
        self.state.committed_inputs += len(batch)
        self.state.last_commit = time.monotonic()
        if self.on_committed is not None:
            self.on_committed(batch, (*batch.dead_letters, *outcomes))
