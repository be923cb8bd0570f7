"""Kafka stream path throughput against the embedded broker over TCP: the stream job's delivery loop over
KafkaSource -> magic-byte check -> KafkaSink (acks=all; flush + offset commit per batch, or per ``--commit-batches``
written batches), next to a bare consumer of the same library reading the same topic (no processing, no producing,
no commits) as the ceiling.

    .venv/bin/python benchmarks/kafka_throughput.py [--messages 20000] [--kb 10] [--batch 256]
        [--client kafka-python|confluent] [--rounds 3] [--commit-batches 1 4]

``--client``: the ``kafka.client`` of source and sink, and the library of the bare consumer they are compared with.
With ``--client confluent`` a bare relay (consume -> produce as many bytes as our path writes -> flush per batch,
no commit) runs in each round too: writing every message back to the same broker on the same cores is part of our
path's cost that the bare consumer does not pay.
``--rounds``: bare consumer and our path read the whole topic alternately this many times (each in a new consumer
group); the ratio printed is the median of the rounds' ratios, each round's shown beside it (a single pass of a
few seconds moves by 2x with the machine's load).

``--commit-batches``: ``kafka.commit_batches`` of our path, one row each against the same bare consumer (a crash
re-delivers up to that many batches; docs/delivery.md, "Grouped commits").

Each path's CPU time is printed too (median over the rounds, each whole call, group join and close included): the
embedded broker's process and this one (the client library's threads included). On a small machine the broker
shares the cores with the client, so what the broker does for our writes is taken from what it can serve the
consumer. ``--pin-broker`` puts the broker's threads on the last core and this process on the others, so the two
stop competing: the bare consumer is then bound by the broker's one core, and the rows show what our writes cost it.

Timing starts at the first non-empty batch (the ~3 s group join is excluded) and, for our path, ends at the last
commit. Not part of CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafka import KafkaConsumer

from benchmarks._proc_cpu import cpu_seconds
from cola_moderation.connectors.kafka.transactions import open_kafka
from cola_moderation.connectors.local.broker import EmbeddedBroker
from cola_moderation.connectors.records import Batch, FilePosition, InputRecord
from cola_moderation.pipeline.runtime.delivery import DeliveryLoop, Done, LoopState
from tests.connectors.jobs import PNG, SERIALIZER, process
from tests.connectors.kafka_util import produce, topics_config


def ours(config, total: int, commit_batches: int = 1) -> float:  # type: ignore[no-untyped-def]
    """Our path as the stream job runs it: the delivery loop over KafkaSource -> check -> KafkaSink, one flush +
    offset commit per ``commit_batches`` written batches (``kafka.commit_batches``). Timed from the first input to
    the last commit."""
    source, sink = open_kafka(config, SERIALIZER, member="bench")

    def submit(batch: Batch) -> Done:
        return Done([process(record) for record in batch.records])

    def stop(state: LoopState) -> bool:  # every input polled: the loop then finishes and commits what it holds
        return state.committed_inputs + state.pending_inputs >= total or time.monotonic() - state.started > 300

    with source, sink:
        loop = DeliveryLoop(source, sink, submit, commit_batches=commit_batches,
                            commit_interval_s=config.commit_interval_ms / 1000, combine=source.combine)
        state = loop.run(stop)
    if state.committed_inputs < total:
        raise RuntimeError(f"only {state.committed_inputs} of {total} inputs committed within 300 s")
    return (state.last_commit or 0.0) - (state.first_input or 0.0)


def confluent_consumer(config, name: str):  # type: ignore[no-untyped-def]
    """A plain confluent consumer of the input topics, in a new group, with our source's fetch sizes and group
    timeouts (librdkafka's default session timeout makes a new group's first fetch wait ~20 s here; not timed, but it
    made each round of this script take a minute)."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": config.bootstrap_servers, "group.id": f"{name}-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": config.session_timeout_ms,
                         "heartbeat.interval.ms": config.heartbeat_interval_ms,
                         "fetch.max.bytes": config.fetch_max_bytes,
                         "max.partition.fetch.bytes": config.max_partition_fetch_bytes,
                         "receive.message.max.bytes": max(config.fetch_max_bytes + 512, 100_000_000)})
    consumer.subscribe(list(config.input_topics))
    return consumer


def bare_confluent(config, total: int) -> float:  # type: ignore[no-untyped-def]
    consumer = confluent_consumer(config, "bare")
    done, started = 0, None
    try:
        while done < total:
            got = sum(1 for m in consumer.consume(num_messages=config.max_batch_records, timeout=0.2)
                      if m.error() is None)
            if got:
                started = started or time.perf_counter()
                done += got
    finally:
        consumer.close()
    return time.perf_counter() - (started or time.perf_counter())


def output_size(value: bytes) -> int:
    """Bytes our path writes for one valid input: its output record's JSON."""
    outcome = process(InputRecord("m0", value, {}, FilePosition("bench", 0)))
    return len(SERIALIZER.json_bytes(outcome.record))  # type: ignore[union-attr]


def relay_confluent(config, total: int, record_bytes: int) -> float:  # type: ignore[no-untyped-def]
    """A bare confluent consume -> produce loop writing what our path writes (a ``record_bytes`` value per valid
    input, the input itself per invalid one): what reading *and* writing costs the broker and the client, with none
    of our per-message work (no record, no serializer, no headers, no commit)."""
    from confluent_kafka import Producer

    consumer = confluent_consumer(config, "relay")
    producer = Producer({"bootstrap.servers": config.bootstrap_servers, "acks": "all",
                         "message.max.bytes": config.max_request_size, "linger.ms": config.linger_ms})
    done, started = 0, None
    try:
        while done < total:
            got, nbytes, deadline = 0, 0, time.monotonic() + config.max_batch_wait_ms / 1000
            # batches filled as our source fills them, so the flushes match
            while got < config.max_batch_records and nbytes < config.max_batch_bytes:
                remaining = max(0.0, deadline - time.monotonic())
                for message in consumer.consume(num_messages=config.max_batch_records - got, timeout=remaining):
                    if message.error() is None:
                        value = message.value() or b""
                        if value.startswith(PNG):
                            producer.produce(config.output_topic, value=value[:record_bytes], key=message.key())
                        else:
                            producer.produce(config.dead_letter_topic, value=value, key=message.key())
                        got, nbytes = got + 1, nbytes + len(value)
                if remaining == 0.0:
                    break
            if got:
                started = started or time.perf_counter()
                producer.flush(30)
                done += got
    finally:
        consumer.close()
    return time.perf_counter() - (started or time.perf_counter())


def bare(config, total: int) -> float:  # type: ignore[no-untyped-def]
    if config.client == "confluent":
        return bare_confluent(config, total)
    consumer = KafkaConsumer(*config.input_topics, bootstrap_servers=config.bootstrap_servers,
                             group_id=f"bare-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest",
                             enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=1500,
                             fetch_max_bytes=config.fetch_max_bytes,
                             max_partition_fetch_bytes=config.max_partition_fetch_bytes)
    done, started = 0, None
    try:
        while done < total:
            got = sum(len(v) for v in consumer.poll(timeout_ms=200, max_records=config.max_batch_records).values())
            if got:
                started = started or time.perf_counter()
                done += got
    finally:
        consumer.close()
    return time.perf_counter() - (started or time.perf_counter())


class Metered:
    """Times each path's call and the CPU the broker and this process spent in it."""

    def __init__(self, broker_pid: int) -> None:
        self.broker_pid = broker_pid
        self.cpu: dict[str, list[tuple[float, float]]] = {}  # path -> [(broker s, this process s)] per round

    def __call__(self, path: str, run: Callable[[], float]) -> float:
        broker, client = cpu_seconds(self.broker_pid), cpu_seconds(os.getpid())
        seconds = run()
        self.cpu.setdefault(path, []).append((cpu_seconds(self.broker_pid) - broker, cpu_seconds(os.getpid()) - client))
        return seconds

    def report(self) -> None:
        print("  CPU s per pass (median of the rounds; the whole call, group join and close included): broker / "
              "this process")
        for path, pairs in self.cpu.items():
            print(f"    {path:<34} {statistics.median(b for b, _ in pairs):5.2f} / "
                  f"{statistics.median(c for _, c in pairs):5.2f}")


def pin_apart(broker_pid: int) -> str:
    """The broker's threads on the last core, this process's on the others; says which."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--pin-broker needs at least 2 cores")
    for task in Path(f"/proc/{broker_pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cores[-1]})
    for task in Path("/proc/self/task").iterdir():  # threads started later inherit their creator's cores
        os.sched_setaffinity(int(task.name), set(cores[:-1]))
    return f"broker on core {cores[-1]}, this process on {', '.join(map(str, cores[:-1]))}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--kb", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--client", choices=("kafka-python", "confluent"), default="kafka-python")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commit-batches", type=int, nargs="+", default=[1],
                        help="kafka.commit_batches of our path: one row each, against the same bare consumer")
    parser.add_argument("--pin-broker", action="store_true",
                        help="the broker on the last core, this process on the others (see above)")
    args = parser.parse_args()
    size = int(args.kb * 1024)
    with EmbeddedBroker() as broker:
        config = topics_config(broker.bootstrap_servers, partitions=args.partitions, max_batch_records=args.batch,
                               client=args.client)
        body = os.urandom(size)
        messages = [(f"m{i}".encode(), (b"\x89PNG\r\n\x1a\n" if i % 50 else b"BAD") + body, []) for i in
                    range(args.messages)]
        started = time.perf_counter()
        produce(broker.bootstrap_servers, config.input_topics[0], messages)
        produced = time.perf_counter() - started
        record_bytes = output_size(messages[1][1])
        pinned = pin_apart(broker.pid) if args.pin_broker else "broker and client share the cores"
        metered = Metered(broker.pid)
        rounds: list[tuple[float, dict[int, float]]] = []  # (bare, {commit_batches: ours})
        relays: list[float] = []  # confluent only
        for n in range(args.rounds):  # alternating, so load changes hit both alike; a new group reads it all again
            def group(tag: str, n: int = n):  # type: ignore[no-untyped-def]
                return config.model_copy(update={"group_id": f"{config.group_id}-{tag}-{n}"})

            ceiling = metered("bare consumer", lambda: bare(group("bare"), args.messages))
            rounds.append((ceiling, {k: metered(f"ours, commit per {k} batch(es)",
                                                lambda k=k: ours(group(f"ours{k}"), args.messages, k))
                                     for k in args.commit_batches}))
            if args.client == "confluent":
                relays.append(metered("bare relay", lambda: relay_confluent(group("relay"), args.messages,
                                                                            record_bytes)))
    ceiling = statistics.median(c for c, _ in rounds)
    mib = args.messages * size / 1024 / 1024
    print(f"{args.messages} messages of {args.kb:g} KiB, {args.partitions} partitions, batches of {args.batch}, "
          f"client {args.client}; {pinned}")
    print(f"  producing the input (kafka-python, acks=all): {args.messages / produced:8.0f} msgs/s")
    print(f"  bare {args.client} consumer, no processing:   {args.messages / ceiling:8.0f} msgs/s "
          f"({mib / ceiling:.0f} MiB/s)")
    for k in args.commit_batches:
        ours_s = statistics.median(o[k] for _, o in rounds)
        ratios = [c / o[k] for c, o in rounds]
        print(f"  KafkaSource -> check -> KafkaSink, flush + commit per {k} batch(es): {args.messages / ours_s:8.0f} "
              f"msgs/s ({mib / ours_s:.0f} MiB/s in; median of {args.rounds} rounds)")
        print(f"    ratio ours / bare consumer: {statistics.median(ratios):.2f} (median; rounds "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; goal >= 0.9)")
    if relays:
        relay_s = statistics.median(relays)
        first = args.commit_batches[0]
        print(f"  bare {args.client} relay, consume -> produce {record_bytes} B per input (the input itself per "
              f"invalid one) -> flush per batch, no commit: {args.messages / relay_s:8.0f} msgs/s")
        print(f"  ratio bare relay / bare consumer: {ceiling / relay_s:.2f}; ours (per {first}) / bare relay: "
              f"{statistics.median(r / o[first] for (_, o), r in zip(rounds, relays, strict=True)):.2f} "
              "(median of the rounds: what our code costs beyond writing every message back)")
    metered.report()


if __name__ == "__main__":
    main()
