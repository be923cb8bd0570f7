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

Retries (both optional, :class:`RetryPolicy`): ``process_retry`` re-submits a batch whose processing failed (a lost
replica, ``ActorDiedError``, a deployment restarting) with exponential backoff until ``within_s`` seconds passed since
its first failure; ``write_retry`` re-adds a batch's records to the sink and commits again after a failed commit
or a failed add (``SinkWriteError``: broker unreachable) in the same way. Giving up raises one
:class:`ProcessingError` / ``SinkWriteError`` whose message names the batch, the attempts and the last cause. A
retried write may repeat records the broker had already taken (at-least-once); nothing is committed before its write
succeeded.

Grouped commits (``commit_batches`` > 1, optional): written batches are committed together, once ``commit_batches`` of
them are written or the oldest was written ``commit_interval_s`` ago, and whenever a poll returns no input (idle) or
the loop stops: one flush and one offset commit (exactly_once: one transaction) for the group, ``source.combine``
making the group's one commit token. What a commit costs is then paid once per group, while processing keeps its
batch size; the price is that outputs become visible (read_committed) and inputs acknowledged later, and that a
crash or an aborted transaction re-delivers the whole group. A batch counts as committed (``on_committed``,
``LoopState.committed_*``) only once its group is.

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
from cola_moderation.connectors.errors import SinkWriteError, TransactionAbortedError, TransactionFencedError
from cola_moderation.connectors.records import Batch, Outcome
from cola_moderation.operators.errors import ColaError

log = logging.getLogger(__name__)


class ProcessingError(ColaError, RuntimeError):
    """A batch's processing kept failing for longer than the retry policy allows."""

    stage = "processing"


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a failing step with exponential backoff (``backoff_s``, doubling, at most ``max_backoff_s``) until
    ``within_s`` seconds passed since its first failure. ``setting`` names the config key in give-up messages."""

    within_s: float = 60.0
    backoff_s: float = 0.5
    max_backoff_s: float = 5.0
    setting: str = ""

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2.0 ** min(attempt - 1, 32))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


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
    commits: int = 0
    """Commit steps that succeeded (exactly_once: transactions committed); fewer than ``committed_batches`` when
    commits are grouped."""
    in_flight: deque[InFlight] = field(default_factory=deque)
    written: list[tuple[Batch, Sequence[Outcome]]] = field(default_factory=list)
    """Batches written to the sink, not yet committed (grouped commits), with their outcomes, in poll order."""
    written_since: float = 0.0
    """``time.monotonic()`` when the oldest batch of ``written`` was written."""
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
        return sum(len(item.batch) for item in self.in_flight) + sum(len(batch) for batch, _ in self.written)


class DeliveryLoop:
    """Drive ``source`` -> ``submit`` -> ``sink`` in poll order with at most ``max_in_flight`` batches in flight.

    ``submit(batch)`` starts processing ``batch.records`` (never called for a batch without records).
    ``commit(batch)`` makes the written batch durable and acknowledges it (default: flush, then commit).
    ``on_committed(batch, outcomes)`` runs after each commit (counting, logging). ``commit_batches`` /
    ``commit_interval_s`` group commits (see the module docstring); ``combine(batches)`` then makes the one batch
    that ``commit`` is called with (its ``position`` covers every batch's; e.g. ``source.combine``). The loop does not
    close the source or the sink.
    """

    def __init__(self, source: Source, sink: Sink, submit: Callable[[Batch], Pending], *, max_in_flight: int = 1,
                 commit: Callable[[Batch], None] | None = None,
                 on_committed: Callable[[Batch, Sequence[Outcome]], None] | None = None,
                 process_retry: RetryPolicy | None = None, write_retry: RetryPolicy | None = None,
                 commit_batches: int = 1, commit_interval_s: float = 1.0,
                 combine: Callable[[Sequence[Batch]], Batch] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """``write_retry`` applies to the default commit step only (a custom ``commit``, e.g. a transaction, has its
        own failure handling)."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if commit_batches < 1:
            raise ValueError(f"commit_batches must be at least 1, got {commit_batches}")
        if commit_batches > 1 and combine is None:
            raise ValueError("commit_batches > 1 needs combine: the source's way to make one commit of several "
                             "batches")
        self.source = source
        self.sink = sink
        self.submit = submit
        self.max_in_flight = max_in_flight
        self.commit = commit or self.flush_then_commit
        self.on_committed = on_committed
        self.process_retry = process_retry
        self.write_retry = write_retry if commit is None else None
        self.commit_batches = commit_batches
        self.commit_interval_s = commit_interval_s
        self.combine = combine
        self.sleep = sleep
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
            while in_flight and (len(in_flight) >= self.max_in_flight or _ready(in_flight[0])):
                self.write_oldest()
            if not len(batch) and not in_flight:  # idle: what is written does not wait for the group to fill
                self.commit_written()
        while in_flight:  # stopping: finish what was submitted, commit what was written
            self.write_oldest()
        self.commit_written()
        return state

    def write_oldest(self) -> None:
        """Write the oldest batch in flight, and commit it (with the batches written before it, when commits are
        grouped) once its group is due."""
        item = self.state.in_flight[0]
        outcomes = self.outcomes(item)  # raises: the batch stays in flight, uncommitted
        self.state.in_flight.popleft()
        self.write(item.batch, outcomes)

    def outcomes(self, item: InFlight) -> Sequence[Outcome]:
        """Wait for ``item``'s outcomes (one per record, in order); with ``process_retry`` a failed batch is
        re-submitted (see the module docstring), else this raises what processing raised."""
        first_failure: float | None = None
        while True:
            try:
                outcomes = item.pending.result()
                break
            except Exception as exc:
                policy = self.process_retry
                if policy is None:
                    raise
                first_failure = self._back_off(policy, exc, item.batch.key, first_failure, item.attempt,
                                               what="processing", give_up=ProcessingError,
                                               failed=f"processing failed {item.attempt} times")
                item.attempt += 1
                item.pending = self._resubmit(item.batch)
        if len(outcomes) != len(item.batch.records):
            raise RuntimeError(f"batch {item.batch.key}: processing returned {len(outcomes)} outcomes for "
                               f"{len(item.batch.records)} records")
        return outcomes

    def _back_off(self, policy: RetryPolicy, exc: Exception, key: str, first_failure: float | None, attempt: int,
                  *, what: str, give_up: type[Exception], failed: str, note: str = "") -> float:
        """Sleep before retry ``attempt + 1`` of batch ``key``'s ``what`` (logged), or, once ``policy.within_s`` has
        passed since ``first_failure``, raise ``give_up`` naming the batch, ``failed``, the time spent, the setting
        and the last cause. Returns ``first_failure`` (now, on the first failure)."""
        now = time.monotonic()
        first_failure = now if first_failure is None else first_failure
        if now - first_failure >= policy.within_s:
            raise give_up(f"batch {key}: {failed} over {now - first_failure:.0f} s ({policy.setting or 'retry limit'}"
                          f"); {note}last: {_one_line(exc)}") from exc
        delay = policy.delay(attempt)
        log.warning("batch %s: %s failed (%s); retrying in %.1f s (attempt %d)", key, what, _one_line(exc), delay,
                    attempt + 1)
        self.sleep(delay)
        return first_failure

    def _resubmit(self, batch: Batch) -> Pending:
        try:
            return self.submit(batch)
        except Exception as exc:  # noqa: BLE001 - surfaces from result(), where the retry policy sees it
            return Failed(exc)

    def write(self, batch: Batch, outcomes: Sequence[Outcome]) -> None:
        """Add ``batch``'s source dead letters and ``outcomes`` to the sink; commit once the group is due."""
        state = self.state
        if not state.written:
            state.written_since = time.monotonic()
        state.written.append((batch, outcomes))
        try:
            self._add(batch, outcomes)
        except SinkWriteError as exc:  # a sink that fails on add, not only on flush: the same retry as a commit
            if self.write_retry is None or isinstance(exc, TransactionFencedError):
                raise
            self.commit_written(failed=exc)
            return
        if len(state.written) >= self.commit_batches or \
                time.monotonic() - state.written_since >= self.commit_interval_s:
            self.commit_written()

    def _add(self, batch: Batch, outcomes: Sequence[Outcome]) -> None:
        for dead in batch.dead_letters:
            self.sink.add_dead_letter(dead)
        for outcome in outcomes:
            self.sink.add_outcome(outcome)

    def commit_written(self, failed: SinkWriteError | None = None) -> None:
        """Commit the batches written and not yet committed, as one (with ``write_retry``: again after a
        ``SinkWriteError``, their records re-added; see the module docstring). If the transaction was aborted
        (exactly_once), the source has been rewound to the committed offsets: those batches and every batch in
        flight are dropped and polled again. ``failed``: adding the newest batch's records already failed, so the
        first attempt is a retry."""
        state = self.state
        written = state.written
        if not written:
            return
        group = written[0][0]
        if len(written) > 1:
            assert self.combine is not None  # commit_batches > 1 needs it (__init__)
            group = self.combine([batch for batch, _ in written])
        first_failure: float | None = None
        attempt = 1
        error = failed
        while True:
            if error is not None:
                policy = self.write_retry
                if policy is None or isinstance(error, TransactionFencedError):
                    raise error
                first_failure = self._back_off(policy, error, group.key, first_failure, attempt, what="write",
                                               give_up=SinkWriteError, failed=f"not written after {attempt} attempts",
                                               note="nothing of it was committed; ")
                attempt += 1
            try:
                if attempt > 1:
                    for batch, outcomes in written:
                        self._add(batch, outcomes)
                self.commit(group)
                break
            except TransactionAbortedError as exc:
                log.warning("%s; dropping %d batches written and %d in flight, they are polled again", exc,
                            len(written), len(state.in_flight))
                state.aborted_batches += len(written) + len(state.in_flight)
                written.clear()
                state.in_flight.clear()
                return
            except SinkWriteError as exc:
                error = exc
        committed, state.written = written, []
        state.commits += 1
        state.last_commit = time.monotonic()
        for batch, outcomes in committed:
            state.committed_batches += 1
            state.committed_inputs += len(batch)
            if self.on_committed is not None:
                self.on_committed(batch, (*batch.dead_letters, *outcomes))


@dataclass
class Failed:
    """A :class:`Pending` whose submission itself raised."""

    error: Exception

    def ready(self) -> bool:
        return True

    def result(self) -> Sequence[Outcome]:
        raise self.error


def _ready(item: InFlight) -> bool:
    """``item.pending.ready()``; a failure counts as ready, so that :meth:`DeliveryLoop.outcomes` sees it."""
    try:
        return item.pending.ready()
    except Exception:  # noqa: BLE001 - handled (retried or raised) where the result is fetched
        return True
