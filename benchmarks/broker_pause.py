"""The broker freezes mid-stream (SIGSTOP for ``--pause-s`` seconds, then SIGCONT): does the stream consumer recover
with nothing lost, and how many inputs are written twice (at-least-once re-delivery)?

    python benchmarks/broker_pause.py [--records 400] [--pause-s 40]

An embedded broker of its own; the stream job's consumer (:class:`StreamConsumer`, the delivery loop of ``cola
stream``) in this process with an in-process :class:`ModerationWorker` on the reference config (no Ray, so the
figure is the connector's behaviour). The broker is stopped once some batches were committed; after SIGCONT the
consumer runs until idle. Prints: inputs written, distinct ids on the output topic, lost, duplicates, seconds from
SIGCONT to the last write.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cola_moderation.connectors.local.broker import EmbeddedBroker
from cola_moderation.connectors.local.kafka_tools import produce, read_topic
from cola_moderation.pipeline.jobs.stream import StreamConsumer
from cola_moderation.pipeline.runtime.config import load_config, parse_config
from cola_moderation.pipeline.runtime.worker import ModerationWorker, WorkerResult

REPO = Path(__file__).resolve().parent.parent


class LocalResponse:
    def __init__(self, future: Future[WorkerResult]) -> None:
        self.future = future

    def result(self, *, timeout_s: float | None = None) -> WorkerResult:
        return self.future.result(timeout=timeout_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--pause-s", type=float, default=40.0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    image = (REPO / "samples" / "images" / "bag.png").read_bytes()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        data = load_config("reference").model_dump(mode="json", exclude_defaults=True)
        data["model"] = {**data.get("model", {}), "device": "cpu"}
        data["kafka"] = {"bootstrap_servers": bootstrap, "input_topics": ["pause-in"], "output_topic": "pause-out",
                         "quarantine_topic": "pause-q", "dead_letter_topic": "pause-dead", "group_id": "pause",
                         "max_batch_records": 8}
        data["stream"] = {"max_in_flight": 2}
        config = parse_config(data, base_dir=REPO / "configs")
        produce(bootstrap, "pause-in", [(f"p{i}".encode(), image, []) for i in range(args.records)])
        worker, pool = ModerationWorker(config), ThreadPoolExecutor(1)

        def moderate(records: Any, received_at: float) -> LocalResponse:
            return LocalResponse(pool.submit(worker.process, records, received_at=received_at))

        consumer = StreamConsumer(config, bootstrap_servers=bootstrap, moderate=moderate)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["summary"] = consumer.run(idle_timeout_s=15)
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcome["error"] = exc

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        while consumer.summary.inputs < args.records // 4 and runner.is_alive():
            time.sleep(0.05)
        written_before = consumer.summary.inputs
        os.kill(broker.pid or 0, signal.SIGSTOP)
        print(f"SIGSTOP after {written_before} inputs written; paused {args.pause_s:.0f} s", flush=True)
        time.sleep(args.pause_s)
        os.kill(broker.pid or 0, signal.SIGCONT)
        resumed = time.monotonic()
        last_write = resumed
        seen = consumer.summary.inputs
        while runner.is_alive():
            runner.join(timeout=0.5)
            if consumer.summary.inputs != seen:
                seen, last_write = consumer.summary.inputs, time.monotonic()
        if "error" in outcome:
            print(f"consumer stopped with {type(outcome['error']).__name__}: {outcome['error']}")
        written = read_topic(bootstrap, "pause-out", expect=args.records, idle_s=1.0) + read_topic(
            bootstrap, "pause-q", expect=0, idle_s=0.5) + read_topic(bootstrap, "pause-dead", expect=0, idle_s=0.5)
        keys = Counter(message.key.decode() for message in written)
        lost = args.records - len(keys)
        duplicates = sum(n - 1 for n in keys.values())
        print(f"records {args.records}; written {consumer.summary.inputs}; distinct on the output topics "
              f"{len(keys)}; lost {lost}; duplicates {duplicates}; last write {last_write - resumed:.1f} s after "
              f"SIGCONT")
        pool.shutdown()
        worker.close()


if __name__ == "__main__":
    main()
