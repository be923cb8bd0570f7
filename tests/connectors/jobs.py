"""A minimal source -> trivial processing -> sink loop, importable by tests and runnable as a subprocess that the
crash tests SIGKILL (``python -m tests.connectors.jobs kafka|parquet ...``).

Processing: payloads starting with a PNG or JPEG signature become output records (``label`` = the format); a header
or column ``route`` = ``quarantine`` sends them to the quarantine route; anything else becomes a dead letter with a
``DecodeError`` (stage ``decode``). The loop is the pipeline's own
:class:`~cola_moderation.pipeline.runtime.delivery.DeliveryLoop`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cola_moderation.connectors.base import Sink, Source
from cola_moderation.connectors.records import Batch, DeadLetter, InputRecord, Outcome, Route, Routed
from cola_moderation.operators.errors import DecodeError
from cola_moderation.pipeline.runtime.delivery import DeliveryLoop, Done, LoopState
from cola_moderation.pipeline.runtime.records import OutputRecord, OutputSerializer

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff"
SERIALIZER = OutputSerializer()


def process(record: InputRecord, *, run: int = 0) -> Outcome:
    """The outcome of one input; ``metadata["run"]`` says which run wrote it."""
    if record.payload.startswith(PNG):
        label = "png"
    elif record.payload.startswith(JPEG):
        label = "jpeg"
    else:
        head = record.payload[:8].hex()
        return DeadLetter.from_exception(record, DecodeError(f"{record.id}: not a PNG or JPEG (starts {head})"))
    metadata = dict(record.metadata)
    route_hint = metadata.get("route") or metadata.get("headers", {}).get("route")
    route = Route.QUARANTINE if route_hint == "quarantine" else Route.OUTPUT
    return Routed(route, OutputRecord(
        id=record.id, label=label, score=1.0, topk=((label, 1.0),), action=route.value, adversarial_score=0.0,
        suspected_adversarial=False, method="magic", model="magic", policy_version="test",
        source=record.source, processed_at=datetime.now(UTC), latency_ms=0.0, metadata={**metadata, "run": run}))


def handle(batch: Batch, sink: Sink, *, run: int = 0) -> None:
    """Write one batch's outcomes and flush (no commit): for tests that drive a source and a sink by hand."""
    for dead in batch.dead_letters:
        sink.add_dead_letter(dead)
    for record in batch.records:
        sink.add_outcome(process(record, run=run))
    sink.flush(batch)


def drain(source: Source, sink: Sink, *, run: int = 0, idle_exit_s: float = 3.0, max_inputs: int | None = None,
          sleep_per_batch_s: float = 0.0, commit_log: Path | None = None, max_in_flight: int = 1,
          commit_batches: int = 1, commit_interval_s: float = 1.0) -> int:
    """Run the delivery loop until the source is exhausted, idle for ``idle_exit_s``, or ``max_inputs`` inputs were
    committed. Returns the number of inputs committed. ``sleep_per_batch_s``: slow "processing" and a pause between
    flush and commit, so a kill often lands inside a batch, flushed or not. ``commit_batches`` /
    ``commit_interval_s``: grouped commits (the source's ``combine``), as the stream job makes them."""

    def submit(batch: Batch) -> Done:
        if sleep_per_batch_s:
            time.sleep(sleep_per_batch_s / 2)
        return Done([process(record, run=run) for record in batch.records])

    commits = 0

    def commit(batch: Batch) -> None:
        nonlocal commits
        sink.flush(batch)
        if sleep_per_batch_s:
            time.sleep(sleep_per_batch_s / 2)
        source.commit(batch)
        commits += 1

    def log_commit(batch: Batch, _outcomes: object) -> None:
        if commit_log is None:
            return
        offsets = {f"{tp.topic}:{tp.partition}": off for tp, (_epoch, off) in (batch.position or {}).items()} \
            if isinstance(batch.position, dict) else {}
        entry = {"run": run, "commit": f"{run}.{threading.get_ident()}.{commits}",  # the commit that covered it
                 "key": batch.key, "offsets": offsets, "inputs": len(batch),
                 "ids": [r.id for r in batch.records] + [d.record.id for d in batch.dead_letters]}
        with _COMMIT_LOG_LOCK, open(commit_log, "a") as log:
            log.write(json.dumps(entry) + "\n")
            log.flush()
            os.fsync(log.fileno())

    def stop(state: LoopState) -> bool:
        if max_inputs is not None and state.committed_inputs + state.pending_inputs >= max_inputs:
            return True
        if hasattr(source, "assignment") and not source.assignment():
            state.last_input = time.monotonic()  # still joining the consumer group
        return not state.in_flight and time.monotonic() - state.last_input > idle_exit_s

    loop = DeliveryLoop(source, sink, submit, max_in_flight=max_in_flight, commit=commit, on_committed=log_commit,
                        commit_batches=commit_batches, commit_interval_s=commit_interval_s,
                        combine=getattr(source, "combine", None))
    return loop.run(stop).committed_inputs


_COMMIT_LOG_LOCK = threading.Lock()


def drain_kafka(config: Any, *, bootstrap: str | None, consumers: int, **options: Any) -> int:
    """``consumers`` group members (a thread, source and sink each; with exactly_once, transactional ids
    ``<group>.consumer-<i>``) drain the input topics; returns the inputs they committed."""
    from cola_moderation.connectors.kafka.endpoint import kafka_endpoint
    from cola_moderation.connectors.kafka.transactions import open_kafka

    members = [f"consumer-{index}" for index in range(consumers)]
    kafka_endpoint(config, bootstrap_servers=bootstrap).prepare(members)  # as the stream job does
    done = [0] * consumers
    errors: list[BaseException] = []

    def member(index: int) -> None:
        try:
            source, sink = open_kafka(config, SERIALIZER, bootstrap_servers=bootstrap, member=members[index])
            with source, sink:  # kafka.commit_batches / commit_interval_ms as the stream job applies them
                done[index] = drain(source, sink, commit_batches=config.commit_batches,
                                    commit_interval_s=config.commit_interval_ms / 1000, **options)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=member, args=(i,), name=f"consumer-{i}") for i in range(consumers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(done)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["kafka", "parquet"])
    parser.add_argument("--config", required=True, help="JSON of the KafkaConfig / ParquetConfig section")
    parser.add_argument("--bootstrap")
    parser.add_argument("--input", nargs="*")
    parser.add_argument("--output")
    parser.add_argument("--run", type=int, default=0)
    parser.add_argument("--idle-exit", type=float, default=3.0)
    parser.add_argument("--sleep-per-batch", type=float, default=0.0)
    parser.add_argument("--commit-log", type=Path)
    parser.add_argument("--consumers", type=int, default=1, help="kafka: group members, one thread each")
    args = parser.parse_args(argv)
    options = {"run": args.run, "idle_exit_s": args.idle_exit, "sleep_per_batch_s": args.sleep_per_batch,
               "commit_log": args.commit_log}
    source: Source
    sink: Sink
    if args.kind == "kafka":
        from cola_moderation.connectors.config import KafkaConfig
        from cola_moderation.connectors.kafka.transactions import open_kafka

        kafka = KafkaConfig.model_validate(json.loads(args.config))
        if args.consumers > 1 or kafka.guarantee == "exactly_once":
            done = drain_kafka(kafka, bootstrap=args.bootstrap, consumers=args.consumers, **options)
            print(json.dumps({"committed_inputs": done, "skipped_batches": 0}), flush=True)
            return 0
        source, sink = open_kafka(kafka, SERIALIZER, bootstrap_servers=args.bootstrap, member="cola-source")
        options.update(commit_batches=kafka.commit_batches, commit_interval_s=kafka.commit_interval_ms / 1000)
    else:
        from cola_moderation.connectors.config import ParquetConfig
        from cola_moderation.connectors.parquet.sink import ParquetSink
        from cola_moderation.connectors.parquet.source import ParquetSource

        parquet = ParquetConfig.model_validate(json.loads(args.config))
        parquet_sink = ParquetSink(args.output, SERIALIZER, parquet)
        source, sink = ParquetSource(args.input, parquet, skip=parquet_sink.is_complete), parquet_sink
    with source, sink:
        done = drain(source, sink, **options)
    skipped = getattr(source, "skipped_batches", 0)
    print(json.dumps({"committed_inputs": done, "skipped_batches": skipped}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
