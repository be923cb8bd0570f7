"""The moderation worker: decode + hash matching + CLIP/COLA + detector + policy for batches of :class:`InputRecord`.

With ``matching.banks`` configured, the decoder also hashes every input (MD5 of its bytes, PDQ of its decoded image)
and the matching stage looks the hashes up before the model runs: a hit is written into the record's ``match`` and
escalates the action through :meth:`~cola_moderation.operators.policy.Policy.with_match`; with
``matching.skip_model_on_match`` a hit is routed without running the model at all.

This one class is what Ray hosts everywhere: the batch job's actor pool, the Serve replicas (HTTP and the stream
job's handle calls). It is cheap to pickle (it carries only the config); :meth:`ModerationWorker.start` builds the
model inside the process that will use it, and is called lazily on first use.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cola_moderation.connectors.records import DeadLetter, InputRecord, Outcome, Route, Routed
from cola_moderation.operators.decode import DecodedBatch, ImageDecoder
from cola_moderation.operators.errors import DecodeError
from cola_moderation.operators.matching.matcher import Match, Matcher
from cola_moderation.operators.moderator import Moderation, Moderator
from cola_moderation.operators.policy import SEVERITY, Decision, Policy
from cola_moderation.pipeline.runtime.config import PipelineConfig
from cola_moderation.pipeline.runtime.library import build_moderator
from cola_moderation.pipeline.runtime.metrics import WorkerMetrics, worker_metrics
from cola_moderation.pipeline.runtime.records import OutputRecord, field_columns, match_fields, verdict_fields


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


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the worker made of one input that produced a record: its route and the record's own fields
    (:func:`~cola_moderation.pipeline.runtime.records.verdict_fields`); the input supplies id, source, metadata."""

    route: Route
    fields: dict[str, Any]


@dataclass
class ColumnResult:
    """:meth:`ModerationWorker.process_columns`' answer, one row per input in input order: ``routes[i]`` is
    ``Route.OUTPUT`` / ``Route.QUARANTINE``, or ``None`` for an input that failed (its error in ``errors[i]``);
    ``columns`` are the record's own columns, null in the failed rows."""

    routes: list[Route | None]
    errors: dict[int, DecodeError]
    columns: dict[str, pa.Array]
    model_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.routes)


class ModerationWorker:
    """Routes each input to exactly one of output / quarantine / dead-letter."""

    def __init__(self, config: PipelineConfig, *, job: str = "local") -> None:
        self.config = config
        self.job = job
        self.policy = Policy(config.policy)
        self._moderator: Moderator | None = None
        self._metrics: WorkerMetrics | None = None
        self._matcher: Matcher | None = None
        self._decoder: ImageDecoder | None = None

    def start(self) -> Moderator:
        """Build the model and the banks' index (once, in the calling process) and the metrics when inside Ray."""
        if self._moderator is None:
            moderator = build_moderator(self.config)
            if self.config.matching.enabled:
                self._matcher = Matcher.load(self.config.matching)
                self._decoder = ImageDecoder(size=moderator.decoder.size, config=self.config.decode,
                                             hasher=self._matcher.hasher)
            self._moderator = moderator
            self._metrics = worker_metrics(self.job)
        return self._moderator

    @property
    def matcher(self) -> Matcher | None:
        """The banks' matcher (``None`` without ``matching.banks``); built by :meth:`start`."""
        self.start()
        return self._matcher

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.taxonomy.label_names

    @property
    def model_name(self) -> str:
        return self.config.model.path

    def process(self, records: Sequence[InputRecord], *, received_at: float | None = None) -> WorkerResult:
        """Decode and moderate ``records``: one outcome per record, in order."""
        started = time.perf_counter()
        return self.process_decoded(records, self.decode(records), received_at=received_at, started=started)

    def decode(self, records: Sequence[InputRecord]) -> DecodedBatch:
        """The decode step of :meth:`process` alone (with the matching stage's hashes when banks are configured):
        callers that overlap decoding the next batch with the model's work on this one (the Serve replica) run it on
        another thread and hand the result to :meth:`process_decoded`."""
        moderator = self.start()
        return (self._decoder or moderator.decoder).decode([record.payload for record in records])

    def process_decoded(self, records: Sequence[InputRecord], decoded: DecodedBatch, *,
                        received_at: float | None = None, started: float | None = None) -> WorkerResult:
        """Moderate ``records`` whose payloads were decoded elsewhere (``decoded`` covers them all, in order)."""
        started = time.perf_counter() if started is None else started
        judgements, model_seconds = self.judge([record.id for record in records], decoded, received_at=received_at,
                                               started=started)
        result = WorkerResult(model_seconds=model_seconds)
        for record, judgement in zip(records, judgements, strict=True):
            result.outcomes.append(DeadLetter.from_exception(record, judgement) if isinstance(judgement, DecodeError)
                                   else Routed(judgement.route, OutputRecord.of(record, judgement.fields)))
        if self._metrics is not None:
            self._metrics.observe(result)
        return result

    def process_columns(self, ids: Sequence[str], decoded: DecodedBatch, *,
                        received_at: float | None = None) -> ColumnResult:
        """Moderate the inputs ``ids`` (their decoded pixels in ``decoded``, in order) into the record's own Arrow
        columns (:data:`~cola_moderation.pipeline.runtime.records.FIELD_NAMES`): the batch job's path, with no
        record objects in between. The caller owns ``id``, ``source`` and the passthrough columns."""
        started = time.perf_counter()
        judgements, model_seconds = self.judge(ids, decoded, received_at=received_at, started=started)
        routed = [None if isinstance(j, DecodeError) else j for j in judgements]  # None: no record for that input
        result = ColumnResult(routes=[None if j is None else j.route for j in routed],
                              errors={i: j for i, j in enumerate(judgements) if isinstance(j, DecodeError)},
                              columns=field_columns([None if j is None else j.fields for j in routed]),
                              model_seconds=model_seconds)
        if self._metrics is not None:
            self._metrics.observe_columns(result)
        return result

    def judge(self, ids: Sequence[str], decoded: DecodedBatch, *, received_at: float | None = None,
              started: float | None = None) -> tuple[list[Judgement | DecodeError], float]:
        """What becomes of each input ``ids[i]`` (one entry per id, in order) and the seconds spent from ``started``
        through the model: matching, the model on what was not skipped, the policy. The one core of
        :meth:`process_decoded` (records) and :meth:`process_columns` (Arrow)."""
        received_at = time.time() if received_at is None else received_at
        started = time.perf_counter() if started is None else started
        moderator = self.start()
        matches = self.match(decoded)
        skipped = matches if self.config.matching.skip_model_on_match else {}
        verdicts = moderator.moderate_decoded(without(decoded, skipped), len(ids))
        model_seconds = time.perf_counter() - started
        now = time.time()
        judgements: list[Judgement | DecodeError] = []
        for index, (record_id, verdict) in enumerate(zip(ids, verdicts, strict=True)):
            match = matches.get(index)
            if index in skipped and match is not None:
                decision = self.policy.with_match(None, bank=match.bank, action=match.action)
                fields = match_fields(match, decision, method=self.config.method, model=self.model_name,
                                      policy_version=self.policy.version, received_at=received_at, now=now)
            elif isinstance(verdict, DecodeError):
                judgements.append(verdict)
                continue
            else:
                fields, decision = self._fields(record_id, verdict, match, received_at=received_at, now=now)
            judgements.append(Judgement(Route.QUARANTINE if decision.quarantine else Route.OUTPUT, fields))
        return judgements, model_seconds

    def match(self, decoded: DecodedBatch) -> dict[int, Match]:
        """Input position -> its bank hit, for the inputs of ``decoded`` that the decoder hashed."""
        if self._matcher is None or not decoded.hashes:
            return {}
        positions = list(decoded.hashes)
        found = self._matcher.match([decoded.hashes[p] for p in positions])
        return {p: m for p, m in zip(positions, found, strict=True) if m is not None}

    def _fields(self, record_id: str, verdict: Moderation, match: Match | None, *, received_at: float,
                now: float) -> tuple[dict[str, Any], Decision]:
        verdict, decision = self.policy.decide_frames(verdict, record_id=record_id)  # animated: strictest frame
        decided_by = "model"
        if match is not None:
            by_bank = self.policy.with_match(None, bank=match.bank, action=match.action)
            decided_by = "match" if SEVERITY[by_bank.action] >= SEVERITY[decision.action] else "model"
            decision = self.policy.with_match(decision, bank=match.bank, action=match.action)
        fields = verdict_fields(verdict, decision, model=self.model_name, policy_version=self.policy.version,
                                received_at=received_at, now=now, match=match, decided_by=decided_by)
        return fields, decision

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        if self._moderator is not None:
            self._moderator.close()
            self._moderator = None


def without(decoded: DecodedBatch, positions: dict[int, Match]) -> DecodedBatch:
    """``decoded`` minus the inputs at ``positions`` (those the model skips)."""
    if not positions:
        return decoded
    keep = [row for row, index in enumerate(decoded.indices) if index not in positions]
    return DecodedBatch(pixels=decoded.pixels[keep], indices=tuple(decoded.indices[row] for row in keep),
                        errors=decoded.errors, frames=tuple(decoded.frames[row] for row in keep) if decoded.frames
                        else (), frame_counts={i: n for i, n in decoded.frame_counts.items() if i not in positions},
                        hashes=decoded.hashes)
