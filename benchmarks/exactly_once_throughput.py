"""Exactly-once vs at-least-once on the Kafka stream path, side by side in one run: the pipeline's DeliveryLoop over
KafkaSource -> magic-byte check (no model) -> KafkaSink, against the embedded broker (or ``--bootstrap``) over TCP.

    .venv/bin/python benchmarks/exactly_once_throughput.py [--messages 4000] [--kb 10] [--batch 64] [--rounds 2]
        [--client kafka-python|confluent] [--commit-batches 1 4]

Each round runs both guarantees on fresh topics with the same input (order alternates between rounds), once per
``--commit-batches`` value (``kafka.commit_batches``: batches per commit / transaction; the at-least-once baseline
always commits every batch, so each ratio is against the same thing). Throughput:
inputs / (first input polled -> last batch committed); the group join is excluded. Batch latency: poll -> committed.
Commit step: at_least_once = producer flush + offset commit; exactly_once = flush + send_offsets_to_transaction +
commit_transaction. The model is left out on purpose: it is the same for both, and it would hide the commit cost.
Not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cola_moderation.connectors.kafka.transactions import open_kafka
from cola_moderation.connectors.local.broker import EmbeddedBroker
from cola_moderation.connectors.records import Batch
from cola_moderation.pipeline.runtime.delivery import DeliveryLoop, Done, LoopState
from tests.connectors.jobs import JPEG, SERIALIZER, process
from tests.connectors.kafka_util import produce, topics_config


def run_once(bootstrap: str, guarantee: str, messages: list, *, batch: int, partitions: int,  # type: ignore[type-arg]
             client: str = "kafka-python", commit_batches: int = 1) -> dict[str, float]:
    config = topics_config(bootstrap, partitions=partitions, max_batch_records=batch, guarantee=guarantee,
                           client=client, commit_batches=commit_batches)
    produce(bootstrap, config.input_topics[0], messages)
    polled: dict[str, float] = {}
    latencies: list[float] = []
    commits: list[float] = []
    source, sink = open_kafka(config, SERIALIZER, bootstrap_servers=bootstrap, member="bench")

    def submit(item: Batch) -> Done:
        polled[item.key] = time.perf_counter()
        return Done([process(record) for record in item.records])

    def committed(item: Batch, _outcomes: object) -> None:
        latencies.append(time.perf_counter() - polled.pop(item.key, time.perf_counter()))

    def stop(state: LoopState) -> bool:  # every input polled: the loop then finishes and commits what it holds
        # (waiting for a poll to come back empty would add max_batch_wait_ms to a grouped commit's last group)
        return state.committed_inputs + state.pending_inputs >= len(messages) or time.monotonic() - state.started > 300

    def commit(item: Batch) -> None:  # the default step, timed: flush (+ transaction commit), then source.commit
        started = time.perf_counter()
        sink.flush(item)
        source.commit(item)
        commits.append(time.perf_counter() - started)

    with source, sink:
        loop = DeliveryLoop(source, sink, submit, max_in_flight=1, commit=commit, on_committed=committed,
                            commit_batches=commit_batches, commit_interval_s=config.commit_interval_ms / 1000,
                            combine=source.combine)  # type: ignore[attr-defined]
        state = loop.run(stop)
    if state.committed_inputs < len(messages):
        raise RuntimeError(f"{guarantee}: only {state.committed_inputs} of {len(messages)} inputs within 300 s")
    seconds = (state.last_commit or 0.0) - (state.first_input or 0.0)
    return {"rate": len(messages) / seconds, "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * statistics.quantiles(latencies, n=20)[18],
            "commit_p50_ms": 1000 * statistics.median(commits),
            "commit_p95_ms": 1000 * statistics.quantiles(commits, n=20)[18],
            "batches": len(latencies), "aborted": state.aborted_batches}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--kb", type=float, default=10.0, help="value size in KiB")
    parser.add_argument("--batch", type=int, default=64, help="kafka.max_batch_records")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client", choices=("kafka-python", "confluent"), default="kafka-python")
    parser.add_argument("--commit-batches", type=int, nargs="+", default=[1],
                        help="kafka.commit_batches of the exactly-once runs (one row each)")
    parser.add_argument("--bootstrap", help="an external broker (default: the embedded Tansu broker)")
    args = parser.parse_args()
    body = JPEG + b"x" * int(args.kb * 1024)
    messages = [(f"id-{i}".encode(), body, []) for i in range(args.messages)]
    variants = ["at_least_once"] + [f"exactly_once x{n}" for n in args.commit_batches]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap or stack.enter_context(EmbeddedBroker()).bootstrap_servers
        for round_ in range(args.rounds):
            for name in variants[:: 1 if round_ % 2 == 0 else -1]:
                guarantee, _, groups = name.partition(" x")
                results[name].append(run_once(bootstrap, guarantee, messages, batch=args.batch,
                                              partitions=args.partitions, client=args.client,
                                              commit_batches=int(groups or 1)))
    print(f"{args.messages} messages x {args.kb:g} KiB, batches of {args.batch}, {args.partitions} partitions, "
          f"{args.rounds} rounds, client {args.client}, broker {args.bootstrap or 'embedded Tansu'}; "
          "exactly_once xN: N batches per transaction (kafka.commit_batches)")
    print(f"{'guarantee':18s} {'inputs/s':>9s} {'(per round)':>20s} {'batch p50/p95 ms':>17s} "
          f"{'commit step p50/p95 ms':>23s} {'aborted':>8s}")
    for name, runs in results.items():
        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        per_round = "/".join(f"{r['rate']:.0f}" for r in runs)
        print(f"{name:18s} {median('rate'):9.0f} {per_round:>20s} "
              f"{median('p50_ms'):8.1f}/{median('p95_ms'):<8.1f} "
              f"{median('commit_p50_ms'):14.1f}/{median('commit_p95_ms'):<8.1f} "
              f"{sum(r['aborted'] for r in runs):8.0f}")
    baseline = statistics.median(r["rate"] for r in results["at_least_once"])
    for name in variants[1:]:
        ratio = statistics.median(r["rate"] for r in results[name]) / baseline
        pairs = zip(results[name], results["at_least_once"], strict=True)
        per_round = ", ".join(f"{e['rate'] / a['rate']:.2f}" for e, a in pairs)
        print(f"{name} / at_least_once throughput (medians): {ratio:.2f} (rounds {per_round})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
