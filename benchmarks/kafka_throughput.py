"""Kafka stream path throughput against the embedded broker over TCP: KafkaSource -> magic-byte check -> KafkaSink
(acks=all, flush + commit per batch), next to a bare kafka-python consumer reading the same topic (no processing,
no producing, no commits) as the ceiling.

    .venv/bin/python benchmarks/kafka_throughput.py [--messages 20000] [--kb 10] [--batch 256]
        [--client kafka-python|confluent] [--rounds 3]

``--client``: the ``kafka.client`` of source and sink, and the library of the bare consumer they are compared with.
With ``--client confluent`` a bare relay (consume -> produce as many bytes as our path writes -> flush per batch,
no commit) runs in each round too: writing every message back to the same broker on the same cores is part of our
path's cost that the bare consumer does not pay.
``--rounds``: bare consumer and our path read the whole topic alternately this many times (each in a new consumer
group); the ratio printed is the median of the rounds' ratios, each round's shown beside it (a single pass of a
few seconds moves by 2x with the machine's load).

Timing starts at the first non-empty batch (the ~3 s group join is excluded). Not part of CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafka import KafkaConsumer

from cola_moderation.connectors.kafka.transactions import open_kafka
from cola_moderation.connectors.local.broker import EmbeddedBroker
from cola_moderation.connectors.records import FilePosition, InputRecord
from tests.connectors.jobs import PNG, SERIALIZER, handle, process
from tests.connectors.kafka_util import produce, topics_config


def ours(config, total: int) -> float:  # type: ignore[no-untyped-def]
    done, started = 0, None
    source, sink = open_kafka(config, SERIALIZER, member="bench")
    with source, sink:
        while done < total:
            batch = source.poll()
            if not len(batch):
                continue
            started = started or time.perf_counter()
            handle(batch, sink)
            source.commit(batch)
            done += len(batch)
    return time.perf_counter() - (started or time.perf_counter())


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--kb", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--client", choices=("kafka-python", "confluent"), default="kafka-python")
    parser.add_argument("--rounds", type=int, default=3)
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
        rounds: list[tuple[float, float]] = []
        relays: list[float] = []  # confluent only
        for n in range(args.rounds):  # alternating, so load changes hit both alike; a new group reads it all again
            group = config.model_copy(update={"group_id": f"{config.group_id}-{n}"})
            relay_group = config.model_copy(update={"group_id": f"{config.group_id}-relay-{n}"})
            rounds.append((bare(group, args.messages), ours(group, args.messages)))
            if args.client == "confluent":
                relays.append(relay_confluent(relay_group, args.messages, record_bytes))
    ratios = sorted(ceiling / ours_s for ceiling, ours_s in rounds)
    ceiling, ours_s = statistics.median(c for c, _ in rounds), statistics.median(o for _, o in rounds)
    mib = args.messages * size / 1024 / 1024
    print(f"{args.messages} messages of {args.kb:g} KiB, {args.partitions} partitions, batches of {args.batch}, "
          f"client {args.client}")
    print(f"  producing the input (kafka-python, acks=all): {args.messages / produced:8.0f} msgs/s")
    print(f"  bare {args.client} consumer, no processing:   {args.messages / ceiling:8.0f} msgs/s "
          f"({mib / ceiling:.0f} MiB/s)")
    print(f"  KafkaSource -> check -> KafkaSink + commit:   {args.messages / ours_s:8.0f} msgs/s "
          f"({mib / ours_s:.0f} MiB/s in)  (medians of {args.rounds} rounds)")
    print(f"  ratio ours / bare consumer: {statistics.median(ratios):.2f} (median; rounds "
          f"{', '.join(f'{r:.2f}' for r in (c / o for c, o in rounds))}; goal >= 0.9)")
    if relays:
        relay_s = statistics.median(relays)
        print(f"  bare {args.client} relay, consume -> produce {record_bytes} B per input (the input itself per "
              f"invalid one) -> flush per batch, no commit: {args.messages / relay_s:8.0f} msgs/s")
        print(f"  ratio bare relay / bare consumer: {ceiling / relay_s:.2f}; ours / bare relay: "
              f"{statistics.median(r / o for (_, o), r in zip(rounds, relays, strict=True)):.2f} "
              "(median of the rounds: what our code costs beyond writing every message back)")


if __name__ == "__main__":
    main()
