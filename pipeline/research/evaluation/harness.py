"""Attacks x methods: craft adversarial copies of a dataset once per eps, score clean and attacked images with every
method, and collect accuracies and detector scores.

Threat models (named in the report):

* ``gray-box`` (``pgd``, ``cw``): L-inf PGD crafted on plain zero-shot CLIP (cross-entropy, or the CW margin), then
  the same adversarial images are scored by every method, as in the COLA paper.
* ``adaptive`` (``eot-pgd``): L-inf PGD on COLA's own loss, differentiating through its views, projection and OT,
  with an expectation over freshly drawn views (``eot_samples`` draws averaged per step). Every method then scores
  these images (for methods other than COLA it is a transfer attack).

Methods: ``clip``, ``cola`` and ``cascade`` are the deployed :class:`~cola_moderation.operators.moderator.Moderator`
paths (with the config's detector); the ablations switch COLA's stages on one at a time (``views_only``,
``projection_only``, ``ot_only``). Deterministic: random starts come from a CPU generator seeded with ``seed`` for every
eps, EOT views from a generator seeded with ``seed + 1``; COLA's deployed views are seeded by the config.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.config import ColaConfig, DetectorConfig, TaxonomyConfig
from cola_moderation.operators.defences.cola.scorer import ColaScorer
from cola_moderation.operators.defences.registry import DEFENCES, METHODS
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.errors import ConfigError
from cola_moderation.operators.moderator import Moderator
from cola_moderation.pipeline.research.attack_registry import EVAL_ATTACKS, SUITE_NAMES
from cola_moderation.pipeline.research.attacks import (
    LossFn,
    clip_cross_entropy,
    clip_cw_margin,
    cola_cross_entropy,
    pgd_linf,
    round_to_8bit,
)
from cola_moderation.pipeline.research.evaluation.datasets import EvalDataset
from cola_moderation.pipeline.research.evaluation.metrics import accuracy, auroc, tpr_at_fpr

log = logging.getLogger(__name__)

DEPLOYED = METHODS
"""The deployed methods, as the registry lists them."""
ABLATIONS = {"views_only": "views", "projection_only": "projection", "ot_only": "transport"}
SCORED = (*DEPLOYED, *ABLATIONS)
"""Every method a report scores: the deployed ones and COLA's ablations."""
METHOD_DESCRIPTIONS = {
    **{name: defence.summary for name, defence in DEFENCES.items()},
    "views_only": "COLA with only the views on (no projection; weighted mean cost instead of OT)",
    "projection_only": "COLA with only the text-subspace projection on (one view, no OT)",
    "ot_only": "COLA with only OT on (one view, no projection): OT against the per-class text distribution",
}
DETECTION_FPR = 0.05


def parse_eps(text: str) -> list[Fraction]:
    """``"0,1/255,4/255"`` or ``"0.0157"`` -> exact fractions; rejects negatives and values above 1."""
    values = []
    for part in text.split(","):
        try:
            value = Fraction(part.strip())
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"--eps: {part.strip()!r} is not a number or fraction like 4/255") from None
        if not 0 <= value <= 1:
            raise ConfigError(f"--eps: {part.strip()} is outside [0, 1] (pixels are in [0, 1])")
        values.append(value)
    return values


def eps_label(eps: Fraction) -> str:
    """``4/255`` for multiples of 1/255 (also ``0.5/255``), else the decimal value; ``clean`` for 0."""
    if eps == 0:
        return "clean"
    scaled = eps * 255
    if scaled.denominator == 1:
        return f"{scaled.numerator}/255"
    if (scaled * 2).denominator == 1:
        return f"{float(scaled)}/255"
    return f"{float(eps):g}"


@dataclass(frozen=True)
class AttackSpec:
    """One attack over a list of eps (L-inf, pixels in [0, 1]). ``step_size``: absolute, or ``None`` for PGD's
    default 2.5 eps / steps; ``eot_samples``: fresh view draws averaged per step (``eot-pgd`` only)."""

    name: str
    eps: tuple[Fraction, ...]
    steps: int = 10
    step_size: float | None = None
    eot_samples: int = 1
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.name not in EVAL_ATTACKS or self.name in SUITE_NAMES:
            raise ConfigError(f"--attack: must be one of {', '.join(EVAL_ATTACKS)}, got {self.name!r}")
        if self.steps < 1 or self.eot_samples < 1 or self.batch_size < 1:
            raise ConfigError(f"--steps, --eot-samples and --batch-size must be >= 1, got {self.steps}, "
                              f"{self.eot_samples}, {self.batch_size}")
        if self.step_size is not None and self.step_size <= 0:
            raise ConfigError(f"--step-size must be > 0, got {self.step_size}")

    @property
    def threat_model(self) -> str | None:
        return EVAL_ATTACKS[self.name].threat_model

    @property
    def attacked_eps(self) -> tuple[Fraction, ...]:
        """The eps values that get an attack (none for ``none``; 0 is the clean pass, always run)."""
        return () if self.name == "none" else tuple(e for e in self.eps if e > 0)


@dataclass
class EpsResult:
    """Per-eps outcome: accuracy per method, detector scores and the cascade's escalation share."""

    accuracy: dict[str, float]
    detector_scores: dict[str, torch.Tensor]
    escalated: float
    attack_seconds: float = 0.0
    scoring_seconds: float = 0.0
    target_fooled: float | None = None
    """Share of images whose attacked copy the attacked model (CLIP or COLA) misclassifies."""


@dataclass
class EvalResult:
    """Everything the report needs: results keyed by eps label (``clean`` first) and detection metrics."""

    spec: AttackSpec
    methods: tuple[str, ...]
    results: dict[str, EpsResult] = field(default_factory=dict)
    detection: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    threshold: float = 0.5
    total_seconds: float = 0.0


class Harness:
    """Builds the deployed moderators and the ablation scorers once for one model and config."""

    def __init__(self, backbone: Backbone, *, taxonomy: TaxonomyConfig, cola: ColaConfig,
                 detector: DetectorConfig, bank: TextBank | None = None) -> None:
        self.backbone = backbone
        self.bank = bank if bank is not None else TextBank.build(backbone, taxonomy)
        self.moderator = Moderator(backbone, taxonomy=taxonomy, method="cola", cola=cola, detector=detector,
                                   bank=self.bank)
        self.ablations = {name: ColaScorer(self.bank, only_stage(cola, stage), logit_scale=backbone.logit_scale)
                          for name, stage in ABLATIONS.items()}

    def attack_loss(self, spec: AttackSpec) -> LossFn:
        """The loss the attack maximises (a fresh EOT generator each call, so every eps sees the same draws)."""
        if spec.name == "pgd":
            return clip_cross_entropy(self.backbone, self.moderator.zero_shot)
        if spec.name == "cw":
            return clip_cw_margin(self.backbone, self.moderator.zero_shot)
        if spec.name == "eot-pgd":
            single = cola_cross_entropy(self.backbone, self.moderator.cola, eot_seed=spec.seed + 1)
            if spec.eot_samples == 1:
                return single
            return lambda x, y: torch.stack([single(x, y) for _ in range(spec.eot_samples)]).mean(0)
        raise ConfigError(f"attack {spec.name!r} crafts no adversarial images")

    def craft(self, batches: list[tuple[torch.Tensor, torch.Tensor]], spec: AttackSpec,
              eps: Fraction) -> list[torch.Tensor]:
        """Adversarial copies of ``(pixels, labels)`` batches at ``eps``, batch by batch. The random start comes from
        a generator seeded with ``spec.seed`` (and EOT draws from ``spec.seed + 1``) at every call, so the result
        depends only on the inputs, the model and ``spec``. Copies are rounded to 8 bits (what an upload carries)."""
        generator = torch.Generator().manual_seed(spec.seed)
        loss = self.attack_loss(spec)
        return [round_to_8bit(pgd_linf(loss, x, y, eps=float(eps), steps=spec.steps, step_size=spec.step_size,
                                       generator=generator)) for x, y in batches]

    def target_predictions(self, spec: AttackSpec, pixels: torch.Tensor) -> torch.Tensor:
        """Predictions of the attacked model (plain CLIP for gray-box, COLA for adaptive)."""
        if spec.threat_model == "adaptive":
            return self.moderator.cola.score_pixels(self.backbone, pixels).predicted
        return self.moderator.scores(pixels).predicted

    def score(self, pixels: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """Predictions ``[B]`` per method, detector scores ``[B]`` per deployed method, cascade escalation ``[B]``."""
        predicted: dict[str, torch.Tensor] = {}
        detector: dict[str, torch.Tensor] = {}
        escalated = torch.zeros(0)
        with torch.inference_mode():
            for method in DEPLOYED:
                verdict = self.moderator.verdict(pixels, method=method)
                predicted[method] = verdict.scores.predicted.cpu()
                detector[method] = verdict.adversarial_scores.float().cpu()
                if method == "cascade":
                    escalated = verdict.cola_applied.cpu()
            for name, scorer in self.ablations.items():
                predicted[name] = scorer.score_pixels(self.backbone, pixels).predicted.cpu()
        return predicted, detector, escalated

    def run(self, dataset: EvalDataset, spec: AttackSpec,
            progress: Callable[[str], None] | None = None) -> EvalResult:
        """Clean pass, then one attacked pass per eps in ``spec.attacked_eps``."""
        started = time.perf_counter()
        result = EvalResult(spec=spec, methods=SCORED, threshold=self.moderator.detector.threshold)
        labels = dataset.labels
        batches = [(dataset.pixels[i : i + spec.batch_size], labels[i : i + spec.batch_size])
                   for i in range(0, len(dataset), spec.batch_size)]
        clean = self._score_all(batches)
        result.results["clean"] = self._eps_result(clean, labels)
        result.results["clean"].scoring_seconds = clean[3]
        for eps in spec.attacked_eps:
            label = eps_label(eps)
            tick = time.perf_counter()
            attacked = self.craft(batches, spec, eps)
            attack_seconds = time.perf_counter() - tick
            with torch.inference_mode():
                fooled = torch.cat([self.target_predictions(spec, x).cpu() for x in attacked]) != labels
            outcome = self._score_all([(x, y) for x, (_, y) in zip(attacked, batches, strict=True)])
            eps_result = self._eps_result(outcome, labels)
            eps_result.attack_seconds, eps_result.scoring_seconds = attack_seconds, outcome[3]
            eps_result.target_fooled = float(fooled.double().mean())
            result.results[label] = eps_result
            result.detection[label] = {
                method: detection_metrics(result.results["clean"].detector_scores[method],
                                          eps_result.detector_scores[method], threshold=result.threshold)
                for method in DEPLOYED}
            if progress:
                progress(f"{spec.name} {label}: attack {attack_seconds:.1f} s, " + ", ".join(
                    f"{m} {100 * a:.1f}%" for m, a in eps_result.accuracy.items()))
        result.total_seconds = time.perf_counter() - started
        return result

    def _score_all(self, batches: list[tuple[torch.Tensor, torch.Tensor]]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, float]:
        tick = time.perf_counter()
        parts = [self.score(x) for x, _ in batches]
        predicted = {m: torch.cat([p[0][m] for p in parts]) for m in SCORED}
        detector = {m: torch.cat([p[1][m] for p in parts]) for m in DEPLOYED}
        escalated = torch.cat([p[2] for p in parts])
        return predicted, detector, escalated, time.perf_counter() - tick

    @staticmethod
    def _eps_result(outcome: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, float],
                    labels: torch.Tensor) -> EpsResult:
        predicted, detector, escalated, _ = outcome
        return EpsResult(accuracy={m: accuracy(predicted[m], labels) for m in SCORED}, detector_scores=detector,
                         escalated=float(escalated.double().mean()) if escalated.numel() else 0.0)


def only_stage(config: ColaConfig, stage: str) -> ColaConfig:
    """``config`` with exactly one of ``views``, ``projection``, ``transport`` enabled (the others off)."""
    update = {name: getattr(config, name).model_copy(update={"enabled": name == stage})
              for name in ("views", "projection", "transport")}
    return config.model_copy(update=update)


def detection_metrics(clean: torch.Tensor, attacked: torch.Tensor, *, threshold: float) -> dict[str, float]:
    """Clean scores are negatives, attacked copies positives (every copy, whether or not the attack succeeded)."""
    return {"auroc": auroc(clean, attacked), "tpr_at_5pct_fpr": tpr_at_fpr(clean, attacked, DETECTION_FPR),
            "flagged_clean": float((clean >= threshold).double().mean()),
            "flagged_attacked": float((attacked >= threshold).double().mean())}
