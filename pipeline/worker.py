"""The moderation worker: decode + CLIP/COLA + detector + policy for batches of :class:`InputRecord`.

This one class is what Ray hosts everywhere: the batch job's actor pool, the Serve replicas (HTTP and the stream
job's handle calls). It is cheap to pickle (it carries only the config); :meth:`ModerationWorker.start` builds the
model inside the process that will use it, and is called lazily on first use.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.records import DeadLetter, InputRecord, Route
from operators.errors import DecodeError
from operators.moderator import Moderator
from operators.policy import Policy
from pipeline.config import PipelineConfig
from pipeline.records import output_record


@dataclass
class WorkerResult:
    """Every input of a batch, routed: ``routed`` holds (OUTPUT | QUARANTINE, record) pairs, ``dead_letters`` the
    inputs that produced no output."""

    routed: list[tuple[Route, dict[str, Any]]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    model_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.routed) + len(self.dead_letters)


class ModerationWorker:
    """Routes each input to exactly one of output / quarantine / dead-letter."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.policy = Policy(config.policy)
        self._moderator: Moderator | None = None

    def start(self) -> Moderator:
        if self._moderator is None:
            self._moderator = build_moderator(self.config)
        return self._moderator

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.taxonomy.label_names

    @property
    def model_name(self) -> str:
        return self.config.model.path

    def process(self, records: Sequence[InputRecord], *, received_at: float | None = None) -> WorkerResult:
        received_at = time.time() if received_at is None else received_at
        moderator = self.start()
        started = time.perf_counter()
        verdicts = moderator.moderate([record.payload for record in records])
        result = WorkerResult(model_seconds=time.perf_counter() - started)
        for record, verdict in zip(records, verdicts, strict=True):
            if isinstance(verdict, DecodeError):
                result.dead_letters.append(DeadLetter.from_exception(record, verdict))
                continue
            decision = self.policy.decide(verdict.topk, suspected_adversarial=verdict.suspected_adversarial)
            routed = output_record(record, verdict, decision, model=self.model_name,
                                   policy_version=self.policy.version, received_at=received_at)
            result.routed.append((Route.QUARANTINE if decision.quarantine else Route.OUTPUT, routed))
        return result

    def close(self) -> None:
        if self._moderator is not None:
            self._moderator.close()
            self._moderator = None


def build_moderator(config: PipelineConfig) -> Moderator:
    """The operator chain a config describes (model loaded on the configured device)."""
    return Moderator.from_config(model=config.model, taxonomy=config.taxonomy, decode=config.decode,
                                 method=config.method, cola=config.cola, detector=config.detector)
