"""Run summaries of the batch and stream jobs: counts per route, label and action, flags, dead letters, speed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cola_moderation.connectors.records import DeadLetter, Outcome

if TYPE_CHECKING:
    from cola_moderation.pipeline.runtime.records import OutputRecord


@dataclass
class RunSummary:
    """What a run wrote. Fed one record at a time by the job that writes them."""

    inputs: int = 0
    skipped_batches: int = 0
    routes: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    flagged: int = 0
    dead_letter_errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    first_output_s: float | None = None
    """Seconds from the start to the first written batch (the batch job's start-up: worker processes, imports,
    model loading), and how many inputs that batch held; see :attr:`steady_throughput`."""
    first_output_inputs: int = 0
    first_rows_s: float | None = None
    """Seconds from the start to the model stage's first rows reaching the batch job's driver: the pool actor's
    process, its imports and model loading, then its first block (the first written batch follows once all rows of
    a source batch are back)."""
    cluster_s: float | None = None
    """Seconds the batch job took to start (or join, ``--address``) its Ray cluster, before its clock starts."""
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    """Input files the batch job skipped (``parquet.on_bad_file: skip``), with the reason."""

    def add_output(self, route: str, record: OutputRecord) -> None:
        self.add_counts(route, record.label, record.action, record.suspected_adversarial)

    def add_counts(self, route: str, label: str, action: str, flagged: bool) -> None:
        """Count one output record from its fields (the batch job reads them from Arrow columns)."""
        self.inputs += 1
        self.routes[route] += 1
        self.labels[label] += 1
        self.actions[action] += 1
        self.flagged += bool(flagged)

    def add(self, outcome: Outcome) -> None:
        """Count one written outcome."""
        if isinstance(outcome, DeadLetter):
            self.add_dead_letter(outcome.error_stage, outcome.error_class)
        else:
            self.add_output(outcome.route.value, outcome.record)

    def mark_first_output(self, elapsed_s: float) -> None:
        """Record, once, that the first batch (all inputs counted so far) was written ``elapsed_s`` after the start."""
        if self.first_output_s is None:
            self.first_output_s = elapsed_s
            self.first_output_inputs = self.inputs

    def mark_first_rows(self, elapsed_s: float) -> None:
        """Record, once, that the model stage's first rows reached the driver ``elapsed_s`` after the start."""
        if self.first_rows_s is None:
            self.first_rows_s = elapsed_s

    def add_dead_letter(self, stage: str, error_class: str) -> None:
        self.inputs += 1
        self.routes["dead_letter"] += 1
        self.dead_letter_errors[f"{stage}: {error_class}"] += 1

    def merge(self, other: RunSummary) -> None:
        """Add another worker's counts (times: the longer run)."""
        self.inputs += other.inputs
        self.skipped_batches += other.skipped_batches
        self.routes.update(other.routes)
        self.labels.update(other.labels)
        self.actions.update(other.actions)
        self.flagged += other.flagged
        self.dead_letter_errors.update(other.dead_letter_errors)
        self.seconds = max(self.seconds, other.seconds)

    @property
    def throughput(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    @property
    def steady_throughput(self) -> float | None:
        """Inputs per second after the first written batch: the rate a longer job converges to, without the
        start-up. None when there is too little after it to measure (under a second: e.g. a small job whose batches
        all finish together)."""
        if self.first_output_s is None or self.inputs <= self.first_output_inputs:
            return None
        span = self.seconds - self.first_output_s
        return (self.inputs - self.first_output_inputs) / span if span >= 1.0 else None

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "skipped_batches": self.skipped_batches, "routes": dict(self.routes),
                "labels": dict(self.labels), "actions": dict(self.actions), "flagged": self.flagged,
                "dead_letter_errors": dict(self.dead_letter_errors), "seconds": round(self.seconds, 3),
                "throughput": round(self.throughput, 2),
                "first_output_s": None if self.first_output_s is None else round(self.first_output_s, 3),
                **({"first_rows_s": round(self.first_rows_s, 3)} if self.first_rows_s is not None else {}),
                "steady_throughput": None if (steady := self.steady_throughput) is None else round(steady, 2),
                **({"cluster_s": round(self.cluster_s, 3)} if self.cluster_s is not None else {}),
                **({"skipped_files": [{"file": f, "reason": r} for f, r in self.skipped_files]}
                   if self.skipped_files else {})}

    def table(self, title: str) -> str:
        """A plain-text report for terminals."""
        lines = [title, "=" * len(title)]
        for file, reason in self.skipped_files:
            lines.append(f"skipped input {file}: {reason}")

        def section(name: str, counts: Mapping[str, int]) -> None:
            lines.append(f"{name}:")
            if not counts:
                lines.append("  (none)")
            for key, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
                lines.append(f"  {key:<32} {count:>7}")

        lines.append(f"inputs processed: {self.inputs}" + (f"  (skipped {self.skipped_batches} batches already "
                                                            "written)" if self.skipped_batches else ""))
        section("routes", self.routes)
        section("labels", self.labels)
        section("actions", self.actions)
        lines.append(f"flagged as suspected adversarial: {self.flagged}")
        section("dead letters", self.dead_letter_errors)
        lines.append(f"time: {self.seconds:.1f} s   throughput: {self.throughput:.1f} images/s")
        if self.first_output_s is not None:  # the start-up, printed even when the job is too short for a rate after
            steady = self.steady_throughput
            lines.append(f"  first batch written after {self.first_output_s:.1f} s (start-up: pool actor, imports, "
                         "model loading)" + (f"; {steady:.1f} images/s after that" if steady is not None else ""))
        if self.first_rows_s is not None:
            lines.append(f"    of which {self.first_rows_s:.1f} s until the model's first rows reached the driver (the "
                         "pool actor's process, imports and model load, then its first block)")
        if self.cluster_s is not None:
            lines.append(f"  Ray cluster ready in {self.cluster_s:.1f} s before that (reuse one with --address)")
        return "\n".join(lines)
