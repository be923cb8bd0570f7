"""DeliveryLoop ordering and commit rules, with in-memory sources and sinks (the Kafka and Parquet connectors run it
against the real broker and files in test_kafka_delivery / test_parquet_sink)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from cola_moderation.connectors.base import Sink, Source
from cola_moderation.connectors.records import Batch, DeadLetter, FilePosition, InputRecord, Outcome, Route, Routed
from cola_moderation.pipeline.runtime.delivery import DeliveryLoop, Done, LoopState


class ListSource(Source):
    def __init__(self, batches: list[Batch]) -> None:
        self.batches = list(batches)
        self.log: list[tuple[str, str]] = []

    def poll(self) -> Batch | None:
        return self.batches.pop(0) if self.batches else None

    def commit(self, batch: Batch) -> None:
        self.log.append(("commit", batch.key))


class ListSink(Sink):
    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log
        self.buffer: list[str] = []

    def add(self, route: Route, record: Any) -> None:
        self.buffer.append(f"{route.value}:{record}")

    def add_dead_letter(self, dead: DeadLetter) -> None:
        self.buffer.append(f"dead:{dead.record.id}")

    def flush(self, batch: Batch | None = None) -> None:
        assert batch is not None
        self.log.append(("flush", f"{batch.key}={','.join(self.buffer)}"))
        self.buffer = []


def batch(key: str, n: int, *, source_dead: int = 0) -> Batch:
    records = tuple(InputRecord(f"{key}-{i}", b"x", {}, FilePosition(key, i)) for i in range(n))
    dead = tuple(DeadLetter(InputRecord(f"{key}-bad{i}", b"", {}, FilePosition(key, 100 + i)), "E", "m", "source")
                 for i in range(source_dead))
    return Batch(key, records, dead)


class FuturePending:
    def __init__(self, future: Future[Sequence[Outcome]]) -> None:
        self.future = future

    def ready(self) -> bool:
        return self.future.done()

    def result(self) -> Sequence[Outcome]:
        return self.future.result()


def outcomes(b: Batch) -> list[Outcome]:
    return [Routed(Route.OUTPUT, r.id) if i % 2 == 0 else DeadLetter(r, "DecodeError", "bad", "decode")
            for i, r in enumerate(b.records)]


def test_out_of_order_results_are_written_and_committed_in_poll_order() -> None:
    batches = [batch("a", 2, source_dead=1), batch("b", 3), batch("c", 1), batch("d", 2)]
    source = ListSource(batches)
    sink = ListSink(source.log)
    gates = {b.key: threading.Event() for b in batches}
    pool = ThreadPoolExecutor(4)

    def work(b: Batch) -> list[Outcome]:
        gates[b.key].wait(10)
        return outcomes(b)

    def submit(b: Batch) -> FuturePending:
        future = pool.submit(work, b)
        if b.key != "a":
            gates[b.key].set()  # every batch but the first finishes at once
        return FuturePending(future)

    seen_window: list[int] = []

    def stop(state: LoopState) -> bool:
        seen_window.append(len(state.in_flight))
        if len(state.in_flight) == 3:
            gates["a"].set()
        return False

    state = DeliveryLoop(source, sink, submit, max_in_flight=3).run(stop)
    pool.shutdown()
    assert max(seen_window) <= 3 and state.committed_inputs == 9 and state.committed_batches == 4
    assert source.log == [("flush", "a=dead:a-bad0,output:a-0,dead:a-1"), ("commit", "a"),
                          ("flush", "b=output:b-0,dead:b-1,output:b-2"), ("commit", "b"),
                          ("flush", "c=output:c-0"), ("commit", "c"),
                          ("flush", "d=output:d-0,dead:d-1"), ("commit", "d")]


def test_a_failed_batch_is_neither_written_nor_committed_and_later_ones_wait() -> None:
    source = ListSource([batch("a", 1), batch("b", 1), batch("c", 1)])
    sink = ListSink(source.log)

    class Failed:
        def ready(self) -> bool:
            return True

        def result(self) -> Sequence[Outcome]:
            raise TimeoutError("replica died")

    def submit(b: Batch) -> Done | Failed:
        return Failed() if b.key == "b" else Done(outcomes(b))

    loop = DeliveryLoop(source, sink, submit, max_in_flight=2)
    with pytest.raises(TimeoutError, match="replica died"):
        loop.run()
    assert source.log == [("flush", "a=output:a-0"), ("commit", "a")]
    assert [item.batch.key for item in loop.state.in_flight] == ["b"]  # still there for a retry policy to resubmit


def test_a_custom_commit_step_replaces_flush_then_commit() -> None:
    source = ListSource([batch("a", 2), Batch("empty", ()), batch("b", 1)])
    sink = ListSink(source.log)
    committed: list[str] = []

    def transactional(b: Batch) -> None:  # e.g. outputs and input offsets in one Kafka transaction
        committed.append(f"{b.key}:{len(sink.buffer)}")
        sink.buffer = []

    loop = DeliveryLoop(source, sink, lambda b: Done(outcomes(b)), commit=transactional,
                        on_committed=lambda b, o: committed.append(f"counted {b.key}:{len(o)}"))
    assert loop.run().committed_inputs == 3
    assert committed == ["a:2", "counted a:2", "b:1", "counted b:1"] and source.log == []


def test_wrong_outcome_count_is_an_error() -> None:
    source = ListSource([batch("a", 2)])
    with pytest.raises(RuntimeError, match="1 outcomes for 2 records"):
        DeliveryLoop(source, ListSink(source.log), lambda b: Done(outcomes(b)[:1])).run()
    assert source.log == []


def joined(batches: Sequence[Batch]) -> Batch:
    """A ``combine``: one batch standing for ``batches`` (what a Kafka source's merged offsets are)."""
    return Batch("+".join(b.key for b in batches), ())


def test_grouped_commits_write_every_batch_and_commit_once_per_group() -> None:
    source = ListSource([batch("a", 1), batch("b", 2), batch("c", 1), batch("d", 1), batch("e", 1)])
    sink = ListSink(source.log)
    counted: list[str] = []
    seen: list[tuple[int, int]] = []

    def stop(state: LoopState) -> bool:
        seen.append((state.committed_inputs, state.pending_inputs))
        return False

    state = DeliveryLoop(source, sink, lambda b: Done(outcomes(b)), commit_batches=2, combine=joined,
                         on_committed=lambda b, _o: counted.append(b.key)).run(stop)
    assert source.log == [("flush", "a+b=output:a-0,output:b-0,dead:b-1"), ("commit", "a+b"),
                          ("flush", "c+d=output:c-0,output:d-0"), ("commit", "c+d"),
                          ("flush", "e=output:e-0"), ("commit", "e")]  # the last one alone, when the source ends
    assert counted == ["a", "b", "c", "d", "e"] and state.committed_batches == 5 and state.committed_inputs == 6
    # a written batch is pending, not committed, until its group is
    assert seen == [(0, 0), (0, 1), (3, 0), (3, 1), (5, 0), (5, 1)]


def test_a_poll_without_input_commits_what_is_written_and_the_interval_bounds_the_wait() -> None:
    source = ListSource([batch("a", 1), Batch("idle", ()), batch("b", 1), batch("c", 1)])
    DeliveryLoop(source, ListSink(source.log), lambda b: Done(outcomes(b)), commit_batches=10, combine=joined).run()
    assert [entry for entry in source.log if entry[0] == "commit"] == [("commit", "a"), ("commit", "b+c")]
    source = ListSource([batch("a", 1), batch("b", 1)])
    DeliveryLoop(source, ListSink(source.log), lambda b: Done(outcomes(b)), commit_batches=10, commit_interval_s=0.0,
                 combine=joined).run()
    assert [entry for entry in source.log if entry[0] == "commit"] == [("commit", "a"), ("commit", "b")]


def test_an_aborted_group_drops_its_batches_and_those_in_flight_uncounted() -> None:
    from cola_moderation.connectors.errors import TransactionAbortedError

    source = ListSource([batch(key, 1) for key in "abcdefg"])
    counted: list[str] = []
    commits: list[str] = []

    class NotReadyYet(Done):  # "d" is still being processed when "e" and "f" are polled
        def ready(self) -> bool:
            return False

    def commit(b: Batch) -> None:
        commits.append(b.key)
        if len(commits) == 2:
            raise TransactionAbortedError(f"batch {b.key}: transaction aborted")

    def submit(b: Batch) -> Done:
        return (NotReadyYet if b.key == "d" else Done)(outcomes(b))

    state = DeliveryLoop(source, ListSink(source.log), submit, max_in_flight=3, commit=commit, commit_batches=2,
                         combine=joined, on_committed=lambda b, _o: counted.append(b.key)).run()
    # c and d written, e and f in flight when c+d's transaction aborted: a real source polls all four again
    assert commits == ["a+b", "c+d", "g"]
    assert state.aborted_batches == 4 and counted == ["a", "b", "g"] and state.committed_inputs == 3


def test_a_failed_group_write_is_retried_with_every_batch_of_the_group() -> None:
    from cola_moderation.connectors.errors import SinkWriteError
    from cola_moderation.pipeline.runtime.delivery import RetryPolicy

    class FlakySink(ListSink):
        failures = 1

        def flush(self, batch: Batch | None = None) -> None:
            if self.failures:
                self.failures -= 1
                self.buffer = []  # what the broker did not take is gone from the client
                raise SinkWriteError("broker unreachable")
            super().flush(batch)

    source = ListSource([batch("a", 1), batch("b", 1)])
    state = DeliveryLoop(source, FlakySink(source.log), lambda b: Done(outcomes(b)), commit_batches=2, combine=joined,
                         write_retry=RetryPolicy(within_s=5), sleep=lambda _s: None).run()
    assert source.log == [("flush", "a+b=output:a-0,output:b-0"), ("commit", "a+b")] and state.committed_batches == 2


def test_grouped_commits_need_a_way_to_combine_batches() -> None:
    with pytest.raises(ValueError, match="commit_batches > 1 needs combine"):
        DeliveryLoop(ListSource([]), ListSink([]), lambda b: Done(()), commit_batches=2)


def test_a_sink_that_fails_on_add_gets_the_same_retry_as_a_failed_flush() -> None:
    from cola_moderation.connectors.errors import SinkWriteError
    from cola_moderation.pipeline.runtime.delivery import RetryPolicy

    class AddFailsSink(ListSink):
        failures = 1

        def add(self, route: Route, record: Any) -> None:
            if self.failures and record == "b-0":
                self.failures -= 1
                self.buffer = []  # the client dropped what it held
                raise SinkWriteError("broker unreachable")
            super().add(route, record)

    def run(retry: RetryPolicy | None) -> tuple[ListSource, LoopState]:
        source = ListSource([batch("a", 1), batch("b", 1), batch("c", 1)])
        state = DeliveryLoop(source, AddFailsSink(source.log), lambda b: Done(outcomes(b)), commit_batches=2,
                             combine=joined, write_retry=retry, sleep=lambda _s: None).run()
        return source, state

    source, state = run(RetryPolicy(within_s=5))
    assert source.log == [("flush", "a+b=output:a-0,output:b-0"), ("commit", "a+b"),
                          ("flush", "c=output:c-0"), ("commit", "c")]
    assert state.committed_batches == 3
    with pytest.raises(SinkWriteError, match="broker unreachable"):  # no retry policy: the job stops uncommitted
        run(None)
