"""``cola stream``: Kafka -> Ray Serve deployment -> Kafka, at least once or exactly once (``kafka.guarantee``).

Consumer actors (``stream.consumers`` of them, one consumer-group member each) poll bounded batches from the input
topics and send them to the moderation deployment through its Serve handle, so replica autoscaling follows the
stream's load. Up to ``stream.max_in_flight`` batches per consumer are in flight; results are written in poll order
to the output / quarantine / dead-letter topics, the producer is flushed (acks=all), and only then is the batch's
offset committed. A crash re-delivers at most the uncommitted batches. With ``exactly_once`` each batch's writes and
offsets are one Kafka transaction of the consumer's transactional producer (id ``<group>.cola-consumer-<i>``, so a
restarted job fences the one it replaces); an aborted batch is dropped with the batches behind it and read again
(:mod:`cola_moderation.connectors.kafka.transactions`).

The connector is ``stream.source`` (:mod:`cola_moderation.connectors.registry`; Kafka is the one registered): the
job opens each member's source and sink and checks the endpoint (before Ray starts, and while no input arrives)
through the registry only.

Stopping: ``--max-records N`` stops once at least N inputs were written (the batches in flight finish);
``--idle-timeout S`` once no input arrived for S seconds; SIGINT/SIGTERM finish the batches in flight, commit what
was written, and stop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from cola_moderation.connectors.base import Source
from cola_moderation.connectors.errors import BrokerError, SinkWriteError, TransactionFencedError
from cola_moderation.connectors.records import Batch, Outcome
from cola_moderation.connectors.registry import Endpoint, stream_connector
from cola_moderation.pipeline.jobs.ray_errors import raise_ours
from cola_moderation.pipeline.runtime.config import PipelineConfig
from cola_moderation.pipeline.runtime.delivery import DeliveryLoop, LoopState, RetryPolicy
from cola_moderation.pipeline.runtime.records import OutputSerializer
from cola_moderation.pipeline.runtime.summary import RunSummary

log = logging.getLogger(__name__)


class StreamConsumer:
    """One consumer-group member: the :class:`~cola_moderation.pipeline.runtime.delivery.DeliveryLoop` over a Kafka
    source and sink, moderating through ``moderate``.

    ``moderate(records, received_at)`` returns a future-like object with ``.result()`` giving a
    :class:`~cola_moderation.pipeline.runtime.worker.WorkerResult` (a Serve ``DeploymentResponse`` in the stream job).
    """

    def __init__(self, config: PipelineConfig, *, bootstrap_servers: str | None = None, name: str = "consumer-0",
                 moderate: Callable[[Any, float], Any] | None = None) -> None:
        self.config = config
        self.bootstrap_servers = bootstrap_servers
        self.name = name
        self._moderate = moderate
        self._stop = threading.Event()
        self.summary = RunSummary()
        self._started = time.monotonic()
        self._joined_at: float | None = None
        self._loop: DeliveryLoop | None = None
        self.endpoint = stream_endpoint(config, bootstrap_servers=bootstrap_servers)
        self._broker_checked = 0.0
        self._broker_down_since: float | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to finish the batches in flight and return (callable from another thread)."""
        self._stop.set()

    def progress(self) -> tuple[int, float]:
        """(inputs written, seconds since the last input arrived)."""
        last_input = self._loop.state.last_input if self._loop is not None else self._started
        return self.summary.inputs, time.monotonic() - last_input

    def _handle(self) -> Callable[[Any, float], Any]:
        if self._moderate is None:
            from cola_moderation.pipeline.jobs.ray_runtime import quiet_ray_console
            from cola_moderation.pipeline.jobs.serve_app import moderation_handle

            quiet_ray_console()  # importing ray.serve gave this actor Serve's INFO console handler
            handle = moderation_handle()
            self._moderate = lambda records, received_at: handle.process_records.remote(records, received_at)
        return self._moderate

    def run(self, *, max_records: int | None = None, idle_timeout_s: float | None = None) -> RunSummary:
        moderate = self._handle()
        self._started = time.monotonic()
        connector = stream_connector(self.config.stream.source)
        source, sink = connector.open(getattr(self.config, connector.section), OutputSerializer(),
                                      bootstrap_servers=self.bootstrap_servers, member=self.name)
        self._joined_at = None

        def submit(batch: Batch) -> ServeResponse:
            return ServeResponse(moderate(list(batch.records), time.time()))

        def stop(state: LoopState) -> bool:
            if self._stop.is_set():
                return True
            self._check_broker(state)
            if max_records is not None and state.committed_inputs + state.pending_inputs >= max_records:
                return True
            return idle_timeout_s is not None and not state.in_flight and self._idle_for(source) > idle_timeout_s

        stream = self.config.stream
        backoff = {"backoff_s": stream.retry_backoff_s, "max_backoff_s": stream.retry_max_backoff_s}
        process_retry = (RetryPolicy(stream.processing_retry_s, setting="stream.processing_retry_s", **backoff)
                         if stream.processing_retry_s > 0 else None)
        # exactly_once: a failed transaction is aborted and its batches polled again (the loop's own handling)
        write_retry = (RetryPolicy(stream.broker_retry_s, setting="stream.broker_retry_s", **backoff)
                       if stream.broker_retry_s > 0 and not self.endpoint.transactional else None)
        # grouped commits (kafka.commit_batches): a source that can make one commit of several batches says so
        combine = getattr(source, "combine", None)
        group = self.config.kafka if connector.section == "kafka" and combine is not None else None
        self._loop = DeliveryLoop(source, sink, submit, max_in_flight=stream.max_in_flight,
                                  on_committed=lambda _batch, outcomes: self._count(outcomes),
                                  process_retry=process_retry, write_retry=write_retry,
                                  commit_batches=group.commit_batches if group else 1,
                                  commit_interval_s=group.commit_interval_ms / 1000 if group else 1.0,
                                  combine=combine)
        try:
            self._loop.run(stop)
        except SinkWriteError as exc:  # the write retries ran out: name the broker, one line
            if isinstance(exc, TransactionFencedError):
                raise
            raise BrokerError(f"{self.endpoint.description} did not take the output "
                              f"({' '.join(str(exc).split())})") from exc
        finally:
            sink.close()
            source.close()
            state = self._loop.state
            # active time: first input polled to last batch committed (the group join and idle tail excluded)
            if state.first_input is not None and state.last_commit is not None:
                self.summary.seconds = state.last_commit - state.first_input
        return self.summary

    def _check_broker(self, state: LoopState) -> None:
        """While no input arrives, check every 2 s that the endpoint (the broker) accepts connections (the consumer
        itself only logs that it cannot reach it); unreachable for ``stream.broker_retry_s`` stops the job with a
        :class:`BrokerError`. Batches in flight are not committed (a restart re-reads them)."""
        now = time.monotonic()
        if self.config.stream.broker_retry_s <= 0 or now - max(state.last_input, self._broker_checked) < 2.0:
            return
        self._broker_checked = now
        problem = self.endpoint.reachable()
        if problem is None:
            self._broker_down_since = None
            return
        self._broker_down_since = self._broker_down_since or now
        down_for = now - self._broker_down_since
        log.warning("%s unreachable for %.0f s: %s", self.endpoint.description, down_for, problem)
        if down_for >= self.config.stream.broker_retry_s:
            raise BrokerError(f"{self.endpoint.description} unreachable for {down_for:.0f} s "
                              f"(stream.broker_retry_s={self.config.stream.broker_retry_s:g}): {problem}")

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            self.summary.add(outcome)

    def _idle_for(self, source: Source) -> float:
        """Seconds without input, counted from the group join: joining takes a few seconds and is not idleness. A
        member that gets no partition counts from its start plus two session timeouts. Time spent waiting for
        results (a replica restarting, retries) is not idleness either: it counts from the last commit too."""
        now = time.monotonic()
        if self._joined_at is None and source.owns_input():
            self._joined_at = now
        grace = self.endpoint.join_grace_s
        start = self._joined_at if self._joined_at is not None else self._started + grace
        state = self._loop.state if self._loop is not None else None
        last_input = state.last_input if state is not None else self._started
        last_commit = state.last_commit if state is not None and state.last_commit is not None else start
        return now - max(last_input, last_commit, start)


def stream_endpoint(config: PipelineConfig, *, bootstrap_servers: str | None = None) -> Endpoint:
    """The :class:`~cola_moderation.connectors.registry.Endpoint` of ``stream.source`` (``bootstrap_servers``:
    ``--bootstrap``, overriding the connector's own setting)."""
    connector = stream_connector(config.stream.source)
    return connector.endpoint(getattr(config, connector.section), bootstrap_servers=bootstrap_servers)


class ServeResponse:
    """A :class:`~cola_moderation.pipeline.runtime.delivery.Pending` over a Serve ``DeploymentResponse`` (or anything
    with ``result(timeout_s=...)`` that raises ``TimeoutError``) whose result is a
    :class:`~cola_moderation.pipeline.runtime.worker.WorkerResult`."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self._outcomes: Sequence[Outcome] | None = None

    def ready(self) -> bool:
        """Never blocks; a failed call counts as ready (:meth:`result` raises its error for the retry policy)."""
        if self._outcomes is None:
            try:
                self._outcomes = self.response.result(timeout_s=0).outcomes
            except TimeoutError:
                return False
            except Exception:  # noqa: BLE001 - surfaced by result()
                return True
        return True

    def result(self) -> Sequence[Outcome]:
        if self._outcomes is None:
            self._outcomes = self.response.result().outcomes
        return self._outcomes


def run_stream_job(config: PipelineConfig, *, bootstrap_servers: str | None = None, max_records: int | None = None,
                   idle_timeout_s: float | None = None, address: str | None = None,
                   stop_event: threading.Event | None = None) -> RunSummary:
    """Deploy the moderation service, run ``stream.consumers`` consumer actors until a stop condition, and return
    what they wrote. SIGINT/SIGTERM (or ``stop_event``) stop the consumers gracefully."""
    from cola_moderation.pipeline.jobs.preflight import check_model
    from cola_moderation.pipeline.jobs.ray_runtime import check_worker_resources, init_ray

    # one-line errors within seconds, before Ray and the replicas start
    endpoint = stream_endpoint(config, bootstrap_servers=bootstrap_servers)
    endpoint.check()
    check_model(config.model)
    members = [f"cola-consumer-{i}" for i in range(config.stream.consumers)]
    endpoint.prepare(members)  # before any member joins: what a killed earlier run left open is ended first
    init_ray(config.ray, address=address)  # before importing ray/serve: Ray reads its environment at import
    import ray

    from cola_moderation.pipeline.jobs.serve_app import deploy_moderation, shutdown_moderation, uses_private_cluster

    stream = config.stream
    check_worker_resources(config.ray, workers=config.serve.starting_replicas, max_workers=config.serve.max_replicas,
                           reserve_cpus=stream.consumers * stream.consumer_num_cpus)
    private = uses_private_cluster(config, address)
    deploy_moderation(config, address=address, http=False)
    actor: Any = ray.remote(StreamConsumer).options(num_cpus=stream.consumer_num_cpus, max_concurrency=2)
    consumers: list[Any] = [actor.remote(config, bootstrap_servers=bootstrap_servers, name=name) for name in members]
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
        try:
            parts = ray.get(runs)
        except ray.exceptions.RayTaskError as exc:  # a consumer gave up: its own one-line error, not Ray's wrapper
            raise_ours(exc)
            raise
        for part in parts:
            summary.merge(part)
        return summary
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for consumer in consumers:
            ray.kill(consumer)
        shutdown_moderation(private_cluster=private)
