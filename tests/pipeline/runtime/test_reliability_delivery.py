"""Reliability: the delivery loop's retry policies over real files (ParquetSource -> ParquetSink).

Processing that fails like a lost replica is re-submitted and every input is written once; a write that fails
(the output directory vanished) is written again before anything is committed; past the time limit the loop gives
up with one line and leaves the batch uncommitted."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.errors import SinkWriteError
from cola_moderation.connectors.parquet.sink import ParquetSink
from cola_moderation.connectors.parquet.source import ParquetSource
from cola_moderation.connectors.records import Batch, Outcome
from cola_moderation.pipeline.runtime.delivery import DeliveryLoop, Done, Failed, Pending, ProcessingError, RetryPolicy
from tests.connectors.jobs import PNG, SERIALIZER, process

CONFIG = ParquetConfig(batch_rows=4, file_rows=1)  # every accepted batch is written at once


def dataset(tmp_path: Path, rows: int = 10) -> Path:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "image": [PNG + bytes([i]) for i in range(rows)]}),
                   path)
    return path


class ReplicaDied(RuntimeError):
    """What a lost replica looks like to the caller (Ray raises ActorDiedError)."""


def flaky_submit(failures: int) -> tuple[dict[str, int], object]:
    """A submit whose first ``failures`` attempts per batch fail; returns (attempts per batch key, submit)."""
    attempts: dict[str, int] = {}

    def submit(batch: Batch) -> Pending:
        attempts[batch.key] = attempts.get(batch.key, 0) + 1
        if attempts[batch.key] <= failures:
            return Failed(ReplicaDied(f"replica died (attempt {attempts[batch.key]})"))
        outcomes: Sequence[Outcome] = [process(record) for record in batch.records]
        return Done(outcomes)

    return attempts, submit


def written_ids(output: Path) -> list[str]:
    if not any(output.rglob("*.parquet")):
        return []
    return sorted(ds.dataset(output, partitioning="hive").to_table(columns=["id"]).column("id").to_pylist())


def test_failed_processing_is_retried_and_every_input_written_once(tmp_path: Path) -> None:
    attempts, submit = flaky_submit(failures=2)
    waits: list[float] = []
    with ParquetSource(dataset(tmp_path), CONFIG) as source, ParquetSink(tmp_path / "out", SERIALIZER, CONFIG) as sink:
        loop = DeliveryLoop(source, sink, submit, max_in_flight=2, sleep=waits.append,  # type: ignore[arg-type]
                            process_retry=RetryPolicy(within_s=60, backoff_s=0.5, max_backoff_s=0.75))
        state = loop.run()
    assert state.committed_inputs == 10 and written_ids(tmp_path / "out") == sorted(f"r{i}" for i in range(10))
    assert set(attempts.values()) == {3} and waits == [0.5, 0.75] * 3  # 3 batches, backoff doubling up to the cap


def test_processing_gives_up_with_one_line_and_commits_nothing(tmp_path: Path) -> None:
    _, submit = flaky_submit(failures=10**9)
    with ParquetSource(dataset(tmp_path), CONFIG) as source, ParquetSink(tmp_path / "out", SERIALIZER, CONFIG) as sink:
        policy = RetryPolicy(within_s=0.2, backoff_s=0.01, setting="stream.processing_retry_s")
        loop = DeliveryLoop(source, sink, submit, sleep=lambda _s: None,  # type: ignore[arg-type]
                            process_retry=policy)
        with pytest.raises(ProcessingError) as error:
            loop.run()
    message = str(error.value)
    assert "\n" not in message and "stream.processing_retry_s" in message and "ReplicaDied" in message
    assert loop.state.committed_batches == 0 and written_ids(tmp_path / "out") == []
    # without a policy the first failure ends the loop, as before
    _, submit = flaky_submit(failures=1)
    with (ParquetSource(dataset(tmp_path), CONFIG) as source, ParquetSink(tmp_path / "o2", SERIALIZER, CONFIG) as sink,
          pytest.raises(ReplicaDied)):
        DeliveryLoop(source, sink, submit).run()  # type: ignore[arg-type]


def test_failed_write_is_retried_before_the_commit(tmp_path: Path) -> None:
    _, submit = flaky_submit(failures=0)
    output = tmp_path / "out"
    sink = ParquetSink(output, SERIALIZER, CONFIG)
    parts = output / "route=output"
    shutil.rmtree(parts, ignore_errors=True)
    parts.write_text("not a directory")  # the first write of the first batch fails

    def repair(_delay: float) -> None:
        parts.unlink()
        parts.mkdir()

    with ParquetSource(dataset(tmp_path), CONFIG) as source:
        loop = DeliveryLoop(source, sink, submit, sleep=repair,  # type: ignore[arg-type]
                            write_retry=RetryPolicy(within_s=60, backoff_s=0.01))
        state = loop.run()
    assert state.committed_inputs == 10 and written_ids(output) == sorted(f"r{i}" for i in range(10))

    parts2 = tmp_path / "out2"
    sink2 = ParquetSink(parts2, SERIALIZER, CONFIG)
    shutil.rmtree(parts2 / "route=output", ignore_errors=True)
    (parts2 / "route=output").write_text("never repaired")
    with ParquetSource(dataset(tmp_path), CONFIG) as source:
        loop = DeliveryLoop(source, sink2, submit, sleep=lambda _s: None,  # type: ignore[arg-type]
                            write_retry=RetryPolicy(within_s=0.1, backoff_s=0.01, setting="stream.broker_retry_s"))
        with pytest.raises(SinkWriteError, match=r"not written after \d+ attempts.*broker_retry_s.*nothing of it"):
            loop.run()
    assert loop.state.committed_batches == 0
