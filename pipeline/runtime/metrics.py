"""Prometheus metrics of the moderation workers, exported through Ray's metrics agent (``ray.util.metrics``).

Every series carries the tag ``job`` (``batch``, ``stream``, ``serve``). Ray prefixes the names with ``ray_`` on
its Prometheus endpoint.

| name | type | tags | meaning |
|---|---|---|---|
| ``cola_records_in`` | counter | job | inputs handed to a worker |
| ``cola_records_out`` | counter | job, route | records written to ``output`` or ``quarantine`` |
| ``cola_records_dead_letter`` | counter | job, stage | inputs that produced no output, by failing stage |
| ``cola_records_quarantined`` | counter | job | records the policy sent to quarantine |
| ``cola_flagged`` | counter | job | records flagged as suspected adversarial |
| ``cola_batch_size`` | histogram | job | inputs per worker batch |
| ``cola_model_latency_ms`` | histogram | job | decode + model time per batch |
| ``cola_end_to_end_latency_ms`` | histogram | job | receipt (poll / request) to processed, per record |

Outside a Ray process (``cola classify``, unit tests) :func:`worker_metrics` returns ``None`` and nothing is recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cola_moderation.connectors.records import DeadLetter, Route
from cola_moderation.operators.errors import error_fields

if TYPE_CHECKING:
    from cola_moderation.pipeline.runtime.worker import ColumnResult, WorkerResult

LATENCY_BOUNDARIES_MS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
BATCH_BOUNDARIES: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class WorkerMetrics:
    """The metric objects of one worker process, created once."""

    def __init__(self, job: str) -> None:
        from ray.util.metrics import Counter, Histogram

        self.tags = {"job": job}
        self.records_in = Counter("cola_records_in", "inputs handed to a worker", tag_keys=("job",))
        self.records_out = Counter("cola_records_out", "records written to output or quarantine",
                                   tag_keys=("job", "route"))
        self.dead_letter = Counter("cola_records_dead_letter", "inputs that produced no output",
                                   tag_keys=("job", "stage"))
        self.quarantined = Counter("cola_records_quarantined", "records sent to quarantine", tag_keys=("job",))
        self.flagged = Counter("cola_flagged", "records flagged as suspected adversarial", tag_keys=("job",))
        self.batch_size = Histogram("cola_batch_size", "inputs per worker batch", boundaries=BATCH_BOUNDARIES,
                                    tag_keys=("job",))
        self.model_latency = Histogram("cola_model_latency_ms", "decode + model time per batch",
                                       boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("job",))
        self.end_to_end = Histogram("cola_end_to_end_latency_ms", "receipt to processed, per record",
                                    boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("job",))

    def observe(self, result: WorkerResult) -> None:
        """Record one :class:`cola_moderation.pipeline.runtime.worker.WorkerResult` (the records path)."""
        routed = [(o.route, o.record.latency_ms, o.record.suspected_adversarial) for o in result.outcomes
                  if not isinstance(o, DeadLetter)]
        self._observe(len(result), result.model_seconds, routed,
                      [o.error_stage for o in result.outcomes if isinstance(o, DeadLetter)])

    def observe_columns(self, result: ColumnResult) -> None:
        """Record one :class:`cola_moderation.pipeline.runtime.worker.ColumnResult` (the batch job's Arrow path)."""
        latency = result.columns["latency_ms"].to_pylist()
        flagged = result.columns["suspected_adversarial"].to_pylist()
        routed = [(route, latency[i], bool(flagged[i])) for i, route in enumerate(result.routes) if route is not None]
        stages = [error_fields(error)["error.stage"] for error in result.errors.values()]
        self._observe(len(result), result.model_seconds, routed, stages)

    def _observe(self, count: int, model_seconds: float, routed: list[tuple[Route, float, bool]],
                 dead_stages: list[str]) -> None:
        """``routed``: (route, latency_ms, suspected_adversarial) of each record; ``dead_stages``: the failing stage
        of each dead letter."""
        if not count:
            return  # Ray counters refuse increments of 0
        self.records_in.inc(count, tags=self.tags)
        self.batch_size.observe(count, tags=self.tags)
        self.model_latency.observe(model_seconds * 1000.0, tags=self.tags)
        for stage in dead_stages:
            self.dead_letter.inc(1, tags={**self.tags, "stage": stage})
        for route, latency_ms, flagged in routed:
            self.records_out.inc(1, tags={**self.tags, "route": route.value})
            self.end_to_end.observe(latency_ms, tags=self.tags)
            if route is Route.QUARANTINE:
                self.quarantined.inc(1, tags=self.tags)
            if flagged:
                self.flagged.inc(1, tags=self.tags)


def worker_metrics(job: str) -> WorkerMetrics | None:
    """Metrics for this process if it runs inside Ray, else ``None``."""
    try:
        import ray
    except ImportError:
        return None
    return WorkerMetrics(job) if ray.is_initialized() else None
