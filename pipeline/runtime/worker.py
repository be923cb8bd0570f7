"""The moderation worker: decode + CLIP/COLA + detector + policy for batches of :class:`InputRecord`.

This one class is what Ray hosts everywhere: the batch job's actor pool, the Serve replicas (HTTP and the stream
job's handle calls). It is cheap to pickle (it carries only the config); :meth:`ModerationWorker.start` builds the
model inside the process that will use it, and is called lazily on first use.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cola_moderation.connectors.records import DeadLetter, InputRecord, Outcome, Route, Routed
from cola_moderation.operators.decode import DecodedBatch
from cola_moderation.operators.errors import DecodeError
from cola_moderation.operators.moderator import Moderator
from cola_moderation.operators.policy import Policy
from cola_moderation.pipeline.runtime.config import PipelineConfig
from cola_moderation.pipeline.runtime.library import build_moderator
from cola_moderation.pipeline.runtime.metrics import WorkerMetrics, worker_metrics
from cola_moderation.pipeline.runtime.records import OutputRecord


@dataclass
class WorkerResult:
    """One outcome per input, in input order: ``Routed(OUTPUT | QUARANTINE, OutputRecord)`` or a ``DeadLetter``."""

    outcomes: list[Outcome] = field(default_factory=list)
    model_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.outcomes)

    def __iter__(self) -> Iterator[Outcome]:
        return iter(self.outcomes)

    @property
    def routed(self) -> list[Routed[OutputRecord]]:
        """The routed outcomes (input order)."""
        return [o for o in self.outcomes if isinstance(o, Routed)]

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters (input order)."""
        return [o for o in self.outcomes if isinstance(o, DeadLetter)]


class ModerationWorker:
    """Routes each input to exactly one of output / quarantine / dead-letter."""

    def __init__(self, config: PipelineConfig, *, job: str = "local") -> None:
        self.config = config
        self.job = job
        self.policy = Policy(config.policy)
        self._moderator: Moderator | None = None
        self._metrics: WorkerMetrics | None = None

    def start(self) -> Moderator:
        """Build the model (once, in the calling process) and the metrics when running inside Ray."""
        if self._moderator is None:
            self._moderator = build_moderator(self.config)
            self._metrics = worker_metrics(self.job)
        return self._moderator

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.taxonomy.label_names

    @property
    def model_name(self) -> str:
        return self.config.model.path

    def process(self, records: Sequence[InputRecord], *, received_at: float | None = None) -> WorkerResult:
        """Decode and moderate ``records``: one outcome per record, in order."""
        moderator = self.start()
        started = time.perf_counter()
        decoded = moderator.decoder.decode([record.payload for record in records])
        return self.process_decoded(records, decoded, received_at=received_at, started=started)

    def process_decoded(self, records: Sequence[InputRecord], decoded: DecodedBatch, *,
                        received_at: float | None = None, started: float | None = None) -> WorkerResult:
        """Moderate ``records`` whose payloads were decoded elsewhere (``decoded`` covers them all, in order)."""
        received_at = time.time() if received_at is None else received_at
        started = time.perf_counter() if started is None else started
        verdicts = self.start().moderate_decoded(decoded, len(records))
        result = WorkerResult(model_seconds=time.perf_counter() - started)
        now = time.time()
        for record, verdict in zip(records, verdicts, strict=True):
            if isinstance(verdict, DecodeError):
                result.outcomes.append(DeadLetter.from_exception(record, verdict))
                continue
            verdict, decision = self.policy.decide_frames(verdict, record_id=record.id)  # animated: strictest frame
            output = OutputRecord.from_verdict(record, verdict, decision, model=self.model_name,
                                               policy_version=self.policy.version, received_at=received_at, now=now)
            result.outcomes.append(Routed(Route.QUARANTINE if decision.quarantine else Route.OUTPUT, output))
        if self._metrics is not None:
            self._metrics.observe(result)
        return result

    def close(self) -> None:
        if self._moderator is not None:
            self._moderator.close()
            self._moderator = None

