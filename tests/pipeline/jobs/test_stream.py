"""The stream consumer loop against the real embedded broker, with the worker in-process (the Serve path is
covered by the end-to-end stream test)."""

from __future__ import annotations

import collections
import io
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from PIL import Image

from cola_moderation.pipeline.jobs.stream import StreamConsumer
from cola_moderation.pipeline.runtime.config import PipelineConfig, parse_config
from cola_moderation.pipeline.runtime.records import SCHEMA_VERSION, json_schema
from cola_moderation.pipeline.runtime.worker import ModerationWorker, WorkerResult
from tests.connectors.kafka_util import produce, read_topic, topics_config


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class LocalResponse:
    """The part of Serve's DeploymentResponse the consumer uses, over a thread-pool future."""

    def __init__(self, future: Future[WorkerResult]) -> None:
        self.future = future

    def result(self, *, timeout_s: float | None = None) -> WorkerResult:
        return self.future.result(timeout=timeout_s)  # raises TimeoutError like Serve's


LocalWorker = tuple[ModerationWorker, ThreadPoolExecutor]


@pytest.fixture(scope="module")
def local_worker(tiny_model_dir: Path) -> tuple[ModerationWorker, ThreadPoolExecutor]:
    config = base_config(tiny_model_dir, "127.0.0.1:1")
    return ModerationWorker(config), ThreadPoolExecutor(1)


def base_config(tiny_model_dir: Path, bootstrap: str, **kafka: Any) -> PipelineConfig:
    return parse_config({
        "model": {"path": str(tiny_model_dir), "device": "cpu"},
        "taxonomy": {"labels": ["cat", "dog", "car"]},
        "method": "clip", "detector": {"enabled": False},
        "policy": {"rules": {"car": {"review": 0.0}}},
        "kafka": {"bootstrap_servers": bootstrap, "max_batch_records": 16, **kafka},
        "stream": {"max_in_flight": 3},
    })


def test_consumer_writes_every_input_once_and_commits(kafka_broker: Any, tiny_model_dir: Path,
                                                      local_worker: LocalWorker) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topics = topics_config(bootstrap, partitions=2)
    config = base_config(tiny_model_dir, bootstrap, **topics.model_dump(exclude={"bootstrap_servers"}))
    messages = [(f"m{i}".encode(), png(i) if i % 10 else b"not an image", [("tenant", b"t1")]) for i in range(100)]
    produce(bootstrap, topics.input_topics[0], messages)
    worker, pool = local_worker

    def moderate(records: Any, received_at: float) -> LocalResponse:
        return LocalResponse(pool.submit(worker.process, records, received_at=received_at))

    consumer = StreamConsumer(config, name="c0", moderate=moderate)
    summary = consumer.run(idle_timeout_s=3)
    assert summary.inputs == 100
    outputs = read_topic(bootstrap, topics.output_topic, expect=summary.routes["output"], idle_s=0.5)
    quarantined = read_topic(bootstrap, topics.quarantine_topic, expect=summary.routes["quarantine"], idle_s=0.5)
    dead = read_topic(bootstrap, topics.dead_letter_topic, expect=10, idle_s=0.5)
    ids = sorted([m.key.decode() for m in outputs + quarantined + dead])
    assert ids == sorted(f"m{i}" for i in range(100))
    record = json.loads(outputs[0].value if outputs else quarantined[0].value)
    assert record["metadata"]["headers"] == {"tenant": "t1"}
    # every output message is a valid record of the published JSON Schema, with the content headers
    validator = jsonschema.Draft202012Validator(json_schema(), format_checker=jsonschema.FormatChecker())
    for message in outputs + quarantined:
        validator.validate(json.loads(message.value))
        assert dict(message.headers) == {"content-type": b"application/json",
                                         "cola.schema-version": str(SCHEMA_VERSION).encode()}
    assert record["source"]["topic"] == topics.input_topics[0]
    headers = dict(dead[0].headers)
    assert headers["error.stage"] == b"decode" and b"unrecognised image format" in headers["error.message"]
    assert dead[0].value == b"not an image"

    # everything was committed: a second run of the same group finds nothing to do
    again = StreamConsumer(config, name="c1", moderate=moderate).run(idle_timeout_s=2)
    assert again.inputs == 0


def test_max_records_stops_at_a_batch_boundary(kafka_broker: Any, tiny_model_dir: Path,
                                               local_worker: LocalWorker) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topics = topics_config(bootstrap)
    config = base_config(tiny_model_dir, bootstrap, **topics.model_dump(exclude={"bootstrap_servers"}))
    produce(bootstrap, topics.input_topics[0], [(f"k{i}".encode(), png(i), []) for i in range(80)])
    worker, pool = local_worker

    def moderate(records: Any, received_at: float) -> LocalResponse:
        return LocalResponse(pool.submit(worker.process, records, received_at=received_at))

    first = StreamConsumer(config, moderate=moderate).run(max_records=20, idle_timeout_s=10)
    assert 20 <= first.inputs < 20 + 16 * config.stream.max_in_flight
    rest = StreamConsumer(config, moderate=moderate).run(idle_timeout_s=3)
    assert first.inputs + rest.inputs == 80  # nothing lost, nothing written twice (all batches were committed)


@pytest.mark.parametrize("commit_batches", [1, 3])
def test_exactly_once_two_consumers_through_a_rebalance(kafka_broker: Any, tiny_model_dir: Path,
                                                         local_worker: LocalWorker, broker_transactions: Any,
                                                         commit_batches: int) -> None:
    """c1 joins while c0 is mid-stream (a rebalance; c0's batches in flight may turn stale and be aborted): every
    input is committed once, and read_committed readers see each id once where the broker filters aborted
    transactions. With ``kafka.commit_batches: 3`` a transaction holds up to three batches."""
    import threading

    bootstrap = kafka_broker.bootstrap_servers
    topics = topics_config(bootstrap, partitions=4, guarantee="exactly_once", commit_batches=commit_batches,
                           commit_interval_ms=5000)
    config = base_config(tiny_model_dir, bootstrap, **topics.model_dump(exclude={"bootstrap_servers"}))
    produce(bootstrap, topics.input_topics[0],
            [(f"x{i}".encode(), png(i) if i % 10 else b"not an image", []) for i in range(160)])
    worker, pool = local_worker

    def moderate(records: Any, received_at: float) -> LocalResponse:
        time.sleep(0.05)  # slow enough that c1 joins mid-stream
        return LocalResponse(pool.submit(worker.process, records, received_at=received_at))

    consumers = [StreamConsumer(config, name=f"cola-consumer-{i}", moderate=moderate) for i in range(2)]
    summaries: list[Any] = [None, None]

    def run(index: int) -> None:
        summaries[index] = consumers[index].run(idle_timeout_s=4)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    threads[0].start()
    deadline = time.monotonic() + 30
    while consumers[0].progress()[0] < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    threads[1].start()
    for thread in threads:
        thread.join(timeout=120)
    assert summaries[0].inputs + summaries[1].inputs == 160  # each input committed by exactly one transaction
    states = [consumer._loop.state for consumer in consumers if consumer._loop is not None]
    assert sum(state.commits for state in states) <= sum(state.committed_batches for state in states)
    if commit_batches > 1:  # the job's config reached its loop: transactions of several batches
        assert sum(state.commits for state in states) < sum(state.committed_batches for state in states), states
    routes = summaries[0].routes + summaries[1].routes
    got = collections.Counter(m.key.decode() for route, topic in (("output", topics.output_topic),
                                                                  ("quarantine", topics.quarantine_topic),
                                                                  ("dead_letter", topics.dead_letter_topic))
                              for m in read_topic(bootstrap, topic, expect=routes[route], idle_s=1.0,
                                                  isolation_level="read_committed"))
    assert set(got) == {f"x{i}" for i in range(160)}
    if not any(check.name.startswith("aborted_hidden") for check in broker_transactions):
        assert max(got.values()) == 1
