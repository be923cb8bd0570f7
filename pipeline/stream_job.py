"""``cola stream``: Kafka -> Ray Serve deployment -> Kafka, at least once.

Consumer actors (``stream.consumers`` of them, one consumer-group member each) poll bounded batches from the input
topics and send them to the moderation deployment through its Serve handle, so replica autoscaling follows the
stream's load. Up to ``stream.max_in_flight`` batches per consumer are in flight; results are written in poll order
to the output / quarantine / dead-letter topics, the producer is flushed (acks=all), and only then is the batch's
offset committed. A crash re-delivers at most the uncommitted batches.

Stopping: ``--max-records N`` stops once at least N inputs were written (the batches in flight finish);
``--idle-timeout S`` once no input arrived for S seconds; SIGINT/SIGTERM finish the batches in flight, commit what
was written, and stop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from cola_moderation.connectors.kafka_sink import KafkaSink
from cola_moderation.connectors.kafka_source import KafkaSource
from cola_moderation.connectors.records import Batch
from cola_moderation.pipeline.config import PipelineConfig
from cola_moderation.pipeline.summary import RunSummary

log = logging.getLogger(__name__)


class StreamConsumer:
    """One consumer-group member: poll -> moderate (via ``moderate``) -> write -> flush -> commit, in order.

    ``moderate(records, received_at)`` returns a future-like object with ``.result()`` giving a
    :class:`~cola_moderation.pipeline.worker.WorkerResult` (a Serve ``DeploymentResponse`` in the stream job).
    """

    def __init__(self, config: PipelineConfig, *, bootstrap_servers: str | None = None, name: str = "consumer-0",
                 moderate: Callable[[Any, float], Any] | None = None) -> None:
        self.config = config
        self.bootstrap_servers = bootstrap_servers
        self.name = name
        self._moderate = moderate
        self._stop = threading.Event()
        self.summary = RunSummary()
        self.last_input = time.monotonic()
        self._started = time.monotonic()
        self._joined_at: float | None = None
        self._last_commit = time.monotonic()

    def stop(self) -> None:
        """Ask :meth:`run` to finish the batches in flight and return (callable from another thread)."""
        self._stop.set()

    def progress(self) -> tuple[int, float]:
        """(inputs written, seconds since the last input arrived)."""
        return self.summary.inputs, time.monotonic() - self.last_input

    def _handle(self) -> Callable[[Any, float], Any]:
        if self._moderate is None:
            from cola_moderation.pipeline.serve_app import moderation_handle

            handle = moderation_handle()
            self._moderate = lambda records, received_at: handle.process_records.remote(records, received_at)
        return self._moderate

    def run(self, *, max_records: int | None = None, idle_timeout_s: float | None = None) -> RunSummary:
        moderate = self._handle()
        first_input: float | None = None
        self._started = time.monotonic()
        in_flight: deque[InFlight] = deque()
        limit = self.config.stream.max_in_flight
        source = KafkaSource(self.config.kafka, bootstrap_servers=self.bootstrap_servers, client_id=self.name)
        sink = KafkaSink(self.config.kafka, bootstrap_servers=self.bootstrap_servers, client_id=f"{self.name}-sink")
        self.last_input = time.monotonic()
        self._joined_at = None
        try:
            while not self._stop.is_set():
                if max_records is not None and self.summary.inputs + _pending(in_flight) >= max_records:
                    break
                if idle_timeout_s is not None and not in_flight and self._idle_for(source) > idle_timeout_s:
                    break
                batch = source.poll()
                if len(batch):
                    self.last_input = time.monotonic()
                    first_input = self.last_input if first_input is None else first_input
                    response = moderate(list(batch.records), time.time()) if batch.records else None
                    in_flight.append(InFlight(batch, response))
                # write finished batches in poll order; wait for the oldest when the window is full
                while in_flight and (len(in_flight) >= limit or in_flight[0].ready()):
                    self._write(source, sink, in_flight.popleft())
            while in_flight:  # graceful stop: finish what was sent, commit what was written
                self._write(source, sink, in_flight.popleft())
        finally:
            sink.close()
            source.close()
            # active time: first input polled to last batch committed (the group join and idle tail excluded)
            self.summary.seconds = self._last_commit - first_input if first_input is not None else 0.0
        return self.summary

    def _idle_for(self, source: KafkaSource) -> float:
        """Seconds without input, counted from the group join: joining takes a few seconds and is not idleness. A
        member that gets no partition counts from its start plus two session timeouts."""
        now = time.monotonic()
        if self._joined_at is None and source.assignment():
            self._joined_at = now
        grace = 2 * self.config.kafka.session_timeout_ms / 1000
        start = self._joined_at if self._joined_at is not None else self._started + grace
        return now - max(self.last_input, start)

    def _write(self, source: KafkaSource, sink: KafkaSink, item: InFlight) -> None:
        batch, result = item.batch, item.result()
        for dead in batch.dead_letters:
            sink.add_dead_letter(dead)
        if result is not None:
            for route, record in result.routed:
                sink.add(route, record)
            for dead in result.dead_letters:
                sink.add_dead_letter(dead)
        sink.flush(batch)  # raises SinkWriteError: the batch is not committed and will be re-delivered
        source.commit(batch)
        self._last_commit = time.monotonic()
        for dead in batch.dead_letters:
            self.summary.add_dead_letter(dead.error_stage, dead.error_class)
        if result is not None:
            for route, record in result.routed:
                self.summary.add_output(route.value, record)
            for dead in result.dead_letters:
                self.summary.add_dead_letter(dead.error_stage, dead.error_class)


class InFlight:
    """A batch sent for moderation, with its (future) result."""

    def __init__(self, batch: Batch, response: Any) -> None:
        self.batch = batch
        self.response = response  # None when the batch has no records (only source dead letters)
        self._result: Any = None
        self._fetched = response is None

    def ready(self) -> bool:
        """Whether the result has arrived (never blocks)."""
        if not self._fetched:
            try:
                self._result = self.response.result(timeout_s=0)
                self._fetched = True
            except TimeoutError:
                return False
        return True

    def result(self) -> Any:
        """The :class:`~cola_moderation.pipeline.worker.WorkerResult` (``None`` for a batch without records); blocks."""
        if not self._fetched:
            self._result = self.response.result()
            self._fetched = True
        return self._result


def _pending(in_flight: deque[InFlight]) -> int:
    return sum(len(item.batch) for item in in_flight)


def run_stream_job(config: PipelineConfig, *, bootstrap_servers: str | None = None, max_records: int | None = None,
                   idle_timeout_s: float | None = None, address: str | None = None,
                   stop_event: threading.Event | None = None) -> RunSummary:
    """Deploy the moderation service, run ``stream.consumers`` consumer actors until a stop condition, and return
    what they wrote. SIGINT/SIGTERM (or ``stop_event``) stop the consumers gracefully."""
    from cola_moderation.pipeline.ray_runtime import check_worker_resources, init_ray

    init_ray(config.ray, address=address)  # before importing ray/serve: Ray reads its environment at import
    import ray

    from cola_moderation.pipeline.serve_app import deploy_moderation, shutdown_moderation, uses_private_cluster

    stream = config.stream
    check_worker_resources(config.ray, workers=config.serve.starting_replicas, max_workers=config.serve.max_replicas,
                           reserve_cpus=stream.consumers * stream.consumer_num_cpus)
    private = uses_private_cluster(config, address)
    deploy_moderation(config, address=address, http=False)
    actor: Any = ray.remote(StreamConsumer).options(num_cpus=stream.consumer_num_cpus, max_concurrency=2)
    consumers: list[Any] = [actor.remote(config, bootstrap_servers=bootstrap_servers, name=f"cola-consumer-{i}")
                 for i in range(stream.consumers)]
    stop_event = stop_event or threading.Event()
    stopping = False

    def stop_all(*_: Any) -> None:
        stop_event.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        runs = [c.run.remote(max_records=max_records, idle_timeout_s=idle_timeout_s) for c in consumers]
        pending = list(runs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            if pending and not stopping and max_records is not None:
                written = sum(count for count, _ in ray.get([c.progress.remote() for c in consumers]))
                if written >= max_records:
                    stop_event.set()
            if stop_event.is_set() and not stopping:
                stopping = True
                log.info("stopping the consumers: in-flight batches finish and are committed")
                ray.get([c.stop.remote() for c in consumers])
        summary = RunSummary()
        for part in ray.get(runs):
            summary.merge(part)
        return summary
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for consumer in consumers:
            ray.kill(consumer)
        shutdown_moderation(private_cluster=private)
