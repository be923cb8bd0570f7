"""The adaptive attack suite of ``cola eval --attack apgd-ce|apgd-dlr|adaptive``: every attack runs against each
DEPLOYED method end to end and every adversarial copy is scored by every deployed method, so each method is
reported under the strongest attack found against it (per-image worst case).

Targets (the function whose logits the attack differentiates):

* ``clip``: plain zero-shot CLIP.
* ``cola``: COLA with its deployed, fixed seeded views, the projection and OT (not random views: that is a
  different function from the one deployed; ``eot-pgd`` is kept for comparison).
* ``cascade``: CLIP's logits where the deployed gate (detector pre-screen + margin) keeps CLIP's answer, COLA's
  where it escalates; the gate is re-evaluated at every step.

Attacks: ``apgd-ce`` / ``apgd-dlr`` (Auto-PGD as in AutoAttack, cross-entropy / DLR loss, ``apgd_steps`` steps,
``restarts``), ``pgd-ce`` / ``pgd-cw`` (PGD, ``pgd_steps`` steps, cross-entropy / CW margin); ``adaptive`` runs all
four against all three targets plus the detector-aware attack on the cascade: a selective, orthogonal PGD that
lowers CLIP's label loss while keeping the detector's pre-screen below its threshold (Bryniarski et al. 2022),
scored as **correct-or-flagged**: an image counts as defended when the cascade labels it correctly or flags it.

Every adversarial copy is rounded to 8 bits (what an upload can carry) before it is scored. Protocol (as
AutoAttack): attacks run in sequence, each on the images not yet broken for its target by any earlier copy
(including transfers from attacks on other targets and the copies found at a smaller eps, which lie in the larger
ball too). ``independent=True`` instead runs every attack on every clean-correct image, so each attack's own figure
is exact (much slower).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from cola_moderation.operators.config import DetectorConfig
from cola_moderation.operators.defences.registry import DEFENCES, METHODS
from cola_moderation.operators.detector.score import AdversarialDetector
from cola_moderation.operators.errors import ConfigError
from cola_moderation.operators.moderator import Moderator
from cola_moderation.pipeline.research.attack_registry import DETECTOR_AWARE, EVAL_ATTACKS, SUITE_ATTACKS, SUITE_NAMES
from cola_moderation.pipeline.research.attacks import (
    apgd_linf,
    detector_aware_pgd,
    loss_of_logits,
    pgd_linf,
    round_to_8bit,
)
from cola_moderation.pipeline.research.evaluation.datasets import EvalDataset
from cola_moderation.pipeline.research.evaluation.metrics import wilson_interval
from cola_moderation.pipeline.research.targets import attack_logits, screen_logits

log = logging.getLogger(__name__)

ATTACK_TARGETS = tuple(sorted(METHODS, key=lambda name: DEFENCES[name].always))
"""Deployed methods, in the order they are attacked (those that run COLA on every image, the costliest, last: most
images are broken by then)."""


@dataclass(frozen=True)
class SuiteSpec:
    """What ``cola eval`` runs for ``--attack apgd-ce|apgd-dlr|adaptive``."""

    name: str
    eps: tuple[Fraction, ...]
    apgd_steps: int = 100
    pgd_steps: int = 50
    restarts: int = 1
    detector_aware_steps: int = 100
    attacker_seeds: tuple[int | None, ...] = (None,)
    """Noise seeds the detector-aware attacker assumes: ``None`` = the deployed seed (known to the attacker)."""
    independent: bool = False
    seed: int = 0
    batch_size: int = 128
    targets: tuple[str, ...] = ATTACK_TARGETS

    def __post_init__(self) -> None:
        if self.name not in SUITE_NAMES:
            raise ConfigError(f"--attack: suite must be one of {', '.join(SUITE_NAMES)}, got {self.name!r}")
        if min(self.apgd_steps, self.pgd_steps, self.restarts, self.detector_aware_steps, self.batch_size) < 1:
            raise ConfigError("--steps, --restarts and --batch-size must be >= 1")
        unknown = sorted(set(self.targets) - set(ATTACK_TARGETS))
        if unknown:
            raise ConfigError(f"--targets: unknown methods {unknown} (choose from {', '.join(ATTACK_TARGETS)})")

    @property
    def attacks(self) -> tuple[str, ...]:
        return EVAL_ATTACKS[self.name].suite or ()

    @property
    def detector_aware(self) -> bool:
        return self.name in ("adaptive", "detector-aware") and "cascade" in self.targets

    @property
    def attacked_eps(self) -> tuple[Fraction, ...]:
        return tuple(sorted(e for e in self.eps if e > 0))

    def describe(self, attack: str) -> dict[str, object]:
        if attack == DETECTOR_AWARE:
            return {"name": attack, "target": "cascade", "loss": "cross-entropy of plain CLIP, selective + "
                    "orthogonal to the detector's pre-screen logit (Bryniarski et al. 2022)",
                    "steps": self.detector_aware_steps, "step_size": "2.5 eps / steps", "random_start": "0.5 eps"}
        kind, loss = SUITE_ATTACKS[attack].kind, SUITE_ATTACKS[attack].loss
        if kind == "apgd":
            return {"name": attack, "algorithm": "APGD (Croce & Hein 2020, as in AutoAttack)", "loss": loss,
                    "steps": self.apgd_steps, "restarts": self.restarts, "rho": 0.75, "initial_step": "2 eps"}
        return {"name": attack, "algorithm": "PGD (Madry et al.)", "loss": loss, "steps": self.pgd_steps,
                "step_size": "2.5 eps / steps", "random_start": True}


def rate(hits: torch.Tensor) -> dict[str, object]:
    """``{"value", "n", "ci95": [low, high]}`` (Wilson) for a ``[N]`` bool tensor of successes."""
    total, count = int(hits.numel()), int(hits.sum())
    low, high = wilson_interval(count, total)
    value = count / total if total else math.nan
    return {"value": round(value, 6), "n": total, "ci95": [round(low, 6), round(high, 6)]}


@dataclass
class SuiteResult:
    """Per eps label: per-method worst-case correctness, the cascade's correct-or-flagged, and per-attack rows."""

    spec: SuiteSpec
    clean_correct: dict[str, torch.Tensor] = field(default_factory=dict)
    clean_flagged: dict[str, torch.Tensor] = field(default_factory=dict)
    correct: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """eps label -> method -> ``[N]`` bool: correct under every adversarial copy scored so far (worst case)."""
    defended: dict[str, torch.Tensor] = field(default_factory=dict)
    """eps label -> ``[N]`` bool: the cascade labelled correctly or flagged every copy (correct-or-flagged)."""
    rows: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0


class SuiteRunner:
    """Runs a :class:`SuiteSpec` over one dataset with one deployed :class:`Moderator` (its detector, views, OT)."""

    def __init__(self, moderator: Moderator, spec: SuiteSpec) -> None:
        self.moderator = moderator
        self.spec = spec

    def _score(self, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """method -> (``[B]`` correct, ``[B]`` flagged) for every deployed method, in batches."""
        out: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in ATTACK_TARGETS}
        size = self.spec.batch_size
        with torch.inference_mode():
            for start in range(0, pixels.shape[0], size):
                x, y = pixels[start : start + size], labels[start : start + size]
                for method in ATTACK_TARGETS:
                    verdict = self.moderator.verdict(x, method=method)
                    out[method].append(((verdict.scores.predicted.cpu() == y.cpu()), verdict.suspected.cpu()))
        return {m: (torch.cat([c for c, _ in parts]) if parts else torch.zeros(0, dtype=torch.bool),
                    torch.cat([f for _, f in parts]) if parts else torch.zeros(0, dtype=torch.bool))
                for m, parts in out.items()}

    def _craft(self, attack: str, target: str, pixels: torch.Tensor, labels: torch.Tensor, eps: float,
               generator: torch.Generator) -> torch.Tensor:
        spec, moderator = self.spec, self.moderator
        if attack.startswith(DETECTOR_AWARE):
            seed = None if attack == DETECTOR_AWARE else int(attack.rpartition("=")[2])
            guess = None if seed is None else AdversarialDetector(moderator.detector.config, noise_seed=seed)
            threshold = moderator.detector.threshold
            logit = math.log(threshold / (1 - threshold)) if 0 < threshold < 1 else math.inf
            return detector_aware_pgd(lambda x: screen_logits(moderator, x, detector=guess), pixels, labels,
                                      eps=eps, threshold_logit=logit, gate_margin=moderator.cola.config.cascade_margin,
                                      steps=spec.detector_aware_steps, generator=generator)

        def logits(x: torch.Tensor) -> torch.Tensor:
            return attack_logits(moderator, x, method=target)

        kind, loss = SUITE_ATTACKS[attack].kind, SUITE_ATTACKS[attack].loss
        if kind == "apgd":
            return apgd_linf(logits, pixels, labels, eps=eps, loss=loss, steps=spec.apgd_steps,
                             restarts=spec.restarts, generator=generator)
        return pgd_linf(loss_of_logits(logits, loss), pixels, labels, eps=eps, steps=spec.pgd_steps,
                        generator=generator)

    def plan(self) -> list[tuple[str, str]]:
        """(attack, target) pairs in run order; detector-aware attacks last."""
        pairs = [(attack, target) for target in self.spec.targets for attack in self.spec.attacks]
        if self.spec.detector_aware:
            for seed in self.spec.attacker_seeds:
                pairs.append((DETECTOR_AWARE if seed is None else f"{DETECTOR_AWARE}:seed={seed}", "cascade"))
        return pairs

    def run(self, dataset: EvalDataset, progress: Callable[[str], None] | None = None,
            finished_eps: Callable[[SuiteResult], object] | None = None) -> SuiteResult:
        """Clean pass, then the suite per eps (ascending). ``finished_eps`` is called after each eps with the
        results so far (e.g. to write a partial report a long run can be stopped after)."""
        started = time.perf_counter()
        spec = self.spec
        result = SuiteResult(spec=spec)
        pixels, labels = dataset.pixels, dataset.labels
        clean = self._score(pixels, labels)
        result.clean_correct = {m: c for m, (c, _) in clean.items()}
        result.clean_flagged = {m: f for m, (_, f) in clean.items()}
        correct = {m: c.clone() for m, c in result.clean_correct.items()}
        defended = clean["cascade"][0] | clean["cascade"][1]
        for eps in spec.attacked_eps:
            label = f"{eps * 255}/255" if (eps * 255).denominator == 1 else f"{float(eps):g}"
            tick = time.perf_counter()
            if spec.independent:  # every eps and attack starts from the clean results
                correct = {m: c.clone() for m, c in result.clean_correct.items()}
                defended = clean["cascade"][0] | clean["cascade"][1]
            rows: list[dict[str, object]] = []
            generator = torch.Generator().manual_seed(spec.seed)
            before_aware, aware_started = defended.clone(), False
            for attack, target in self.plan():
                aware = attack.startswith(DETECTOR_AWARE)
                if aware and not aware_started:  # every detector-aware variant starts from the same images
                    before_aware, aware_started = defended.clone(), True
                if aware:
                    todo = before_aware.clone()
                elif spec.independent:
                    todo = result.clean_correct[target].clone()
                else:
                    todo = correct[target].clone()
                index = todo.nonzero().squeeze(-1)
                attack_tick = time.perf_counter()
                own_hits = torch.zeros_like(todo)
                if index.numel():
                    parts = []
                    for start in range(0, index.numel(), spec.batch_size):
                        chunk = index[start : start + spec.batch_size]
                        adversarial = self._craft(attack, target, pixels[chunk], labels[chunk], float(eps), generator)
                        parts.append(round_to_8bit(adversarial))
                    scored = self._score(torch.cat(parts), labels[index])
                    for method, (ok, _) in scored.items():
                        correct[method][index] &= ok
                    ok, flagged = scored["cascade"]
                    defended[index] &= ok | flagged
                    own_ok = scored[target][0]
                    own_hits[index] = ~own_ok if not aware else ~(ok | flagged)
                row: dict[str, object] = {**spec.describe(attack.partition(":")[0]), "attack": attack, "target": target,
                                          "attacked": int(index.numel()), "broken": int(own_hits.sum()),
                                          "seconds": round(time.perf_counter() - attack_tick, 1)}
                if aware:
                    row["attacker_knows_seed"] = attack == DETECTOR_AWARE
                    row["correct_or_flagged"] = rate(before_aware & ~own_hits)
                    row["correct_or_flagged_after"] = rate(defended)
                else:
                    row["accuracy_after"] = rate(correct[target])
                    if spec.independent:
                        row["accuracy"] = rate(result.clean_correct[target] & ~own_hits)
                rows.append(row)
                if progress:
                    progress(f"{label} {attack} -> {target}: attacked {row['attacked']}, broke {row['broken']}, "
                             + ", ".join(f"{m} {100 * float(c.double().mean()):.1f}%" for m, c in correct.items())
                             + f", cascade correct-or-flagged {100 * float(defended.double().mean()):.1f}% "
                             f"({row['seconds']} s)")
            result.correct[label] = {m: c.clone() for m, c in correct.items()}
            result.defended[label] = defended.clone()
            result.rows[label] = rows
            result.seconds[label] = round(time.perf_counter() - tick, 1)
            result.total_seconds = time.perf_counter() - started
            if finished_eps:
                finished_eps(result)
        result.total_seconds = time.perf_counter() - started
        return result


def suite_report(result: SuiteResult, detector: DetectorConfig) -> dict[str, object]:
    """The ``suite`` section of a ``cola-eval/2`` report (see
    :mod:`cola_moderation.pipeline.research.evaluation.report`)."""
    spec = result.spec
    by_eps: dict[str, object] = {}
    for label, correct in result.correct.items():
        by_eps[label] = {
            "worst_case": {m: rate(c) for m, c in correct.items()},
            "cascade_correct_or_flagged": rate(result.defended[label]),
            "attacks": result.rows[label],
            "seconds": result.seconds[label],
        }
    return {
        "name": spec.name,
        "protocol": ("independent: every attack on every clean-correct image" if spec.independent else
                     "sequential (AutoAttack): each attack on the images not yet broken for its target by any "
                     "earlier copy, including transfers and copies found at a smaller eps"),
        "targets": list(spec.targets),
        "attacks": [spec.describe(a) for a in spec.attacks]
        + ([spec.describe(DETECTOR_AWARE)] if spec.detector_aware else []),
        "attacker_seeds": ["deployed (known)" if s is None else "guess (unknown)" for s in spec.attacker_seeds],
        "rounding": "every adversarial copy is rounded to 8 bits (multiples of 1/255) before it is scored",
        "detector_threshold": detector.threshold,
        "clean": {m: rate(c) for m, c in result.clean_correct.items()},
        "clean_flagged": {m: rate(f) for m, f in result.clean_flagged.items()},
        "cascade_clean_correct_or_flagged": rate(result.clean_correct["cascade"] | result.clean_flagged["cascade"]),
        "by_eps": by_eps,
        "total_s": round(result.total_seconds, 1),
    }
