"""Adversarial-upload detector: one score in [0, 1] per image from signals the operator computes anyway.

Signals:

* ``residual_energy`` (every image, free): the share of the image embedding outside the text subspace.
* ``view_shift`` (where views were encoded: COLA ran, or the detector's probe view): mean 1 - cos between the
  original view's embedding and the augmented views'. A perturbation tuned to the original pixel grid is partly
  undone by resampling, so attacked images move much more between views than clean ones (the "falsely stable
  under noise" effect TTC reports, seen from the other side).
* ``noise_shift`` (with ``detector.noise_probe``): log(1 - cos) between the embeddings of the image with and
  without a small fixed random noise. Perturbations crafted against the encoder leave the image where the embedding
  is unusually sensitive, so attacked images move far more under the noise than clean ones (TTC measures the same
  sensitivity; on the reference model attacked images are the *less* stable ones).
* ``disagreement`` (where COLA ran): plain CLIP and COLA predict different labels.
* ``confidence_drop`` (where COLA ran): CLIP's top-1 probability minus COLA's probability for that same label.

score = sigmoid(bias + sum of weight * standardised signal); ``suspected_adversarial`` = score >= threshold.
"""

from __future__ import annotations

import os

import torch

from cola_moderation.operators.config import DetectorConfig
from cola_moderation.operators.errors import ConfigError

SEED_ENVIRONMENT_VARIABLE = "COLA_DETECTOR_SEED"


class AdversarialDetector:
    """Scores a batch from CLIP probabilities ``[B, K]`` and residual energies ``[B]``, plus optional view, probe
    and noise shifts ``[B]`` and COLA probabilities ``[B, K]``. Device- and batch-agnostic; never records
    gradients."""

    def __init__(self, config: DetectorConfig | None = None, *, noise_seed: int | None = None) -> None:
        """``noise_seed``: use this probe seed instead of the deployment's (an attacker's guess, in evaluations)."""
        self.config = config or DetectorConfig()
        self._seed = noise_seed
        self._noise: dict[tuple[tuple[int, ...], torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @property
    def noise_seed(self) -> int:
        """The probe noise's seed: ``$COLA_DETECTOR_SEED`` when set (a per-deployment secret), else
        ``detector.noise_seed``. Never logged or written to reports."""
        return self._seed if self._seed is not None else secret_noise_seed(self.config)

    def noisy(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, C, S, S]`` pixels in [0, 1] plus the noise probe's fixed pattern, clamped to [0, 1]."""
        key = (tuple(pixels.shape[1:]), pixels.device, pixels.dtype)
        pattern = self._noise.get(key)
        if pattern is None:
            generator = torch.Generator().manual_seed(self.noise_seed)
            uniform = torch.rand(key[0], generator=generator, dtype=torch.float32) * 2.0 - 1.0
            pattern = (uniform * self.config.noise_amplitude).to(device=pixels.device, dtype=pixels.dtype)
            self._noise[key] = pattern
        return (pixels + pattern).clamp(0.0, 1.0)

    def score(self, residual_energy: torch.Tensor, clip_probs: torch.Tensor, *,
              view_shift: torch.Tensor | None = None, probe_shift: torch.Tensor | None = None,
              noise_shift: torch.Tensor | None = None, cola_probs: torch.Tensor | None = None) -> torch.Tensor:
        """``[B]`` scores in [0, 1] (zeros when the detector is disabled). ``view_shift``: mean over all augmented
        views (COLA ran); ``probe_shift``: the probe's single view (used only without ``view_shift``);
        ``noise_shift``: 1 - cos between the embeddings with and without the probe noise
        (:func:`embedding_shift`)."""
        if not self.config.enabled:
            return torch.zeros_like(residual_energy.detach().float())

        def detached(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.detach()

        logit = self.logit(residual_energy.detach(), clip_probs.detach(), view_shift=detached(view_shift),
                           probe_shift=detached(probe_shift), noise_shift=detached(noise_shift),
                           cola_probs=detached(cola_probs))
        return torch.sigmoid(logit)

    def logit(self, residual_energy: torch.Tensor, clip_probs: torch.Tensor, *,
              view_shift: torch.Tensor | None = None, probe_shift: torch.Tensor | None = None,
              noise_shift: torch.Tensor | None = None, cola_probs: torch.Tensor | None = None) -> torch.Tensor:
        """``[B]`` the score's logit, ``bias + sum of weight * term`` over :meth:`terms`, differentiable in its
        inputs (a detector-aware attack descends it); same arguments as :meth:`score`."""
        config = self.config
        weights = {"residual": config.residual_weight, "view_shift": config.view_shift_weight,
                   "noise_shift": config.noise_shift_weight, "disagreement": config.disagreement_weight,
                   "confidence_drop": config.confidence_drop_weight}
        terms = self.terms(residual_energy, clip_probs, view_shift=view_shift, probe_shift=probe_shift,
                           noise_shift=noise_shift, cola_probs=cola_probs)
        logit = torch.full_like(terms["residual"], config.bias)
        for name, term in terms.items():
            logit = logit + weights[name] * term
        return logit

    def terms(self, residual_energy: torch.Tensor, clip_probs: torch.Tensor, *,
              view_shift: torch.Tensor | None = None, probe_shift: torch.Tensor | None = None,
              noise_shift: torch.Tensor | None = None, cola_probs: torch.Tensor | None = None
              ) -> dict[str, torch.Tensor]:
        """The logit's unweighted terms, each ``[B]``: ``residual``, ``view_shift`` (COLA's, else the view probe's),
        ``noise_shift``, ``disagreement``, ``confidence_drop``; a term whose signal was not given is absent. Shifts
        are standardised by the calibration's centre and scale; the noise probe's enters as the log shift, and with
        ``noise_shift_two_sided`` as its distance from the centre in either direction (too stable is as suspicious
        as too sensitive). Fitting the weights (``benchmarks/fit_detector_weights.py``) regresses on these."""
        config = self.config
        residual_energy, clip_probs = residual_energy.float(), clip_probs.float()
        terms = {"residual": (residual_energy - config.residual_center) / config.residual_scale}
        device = terms["residual"].device
        shift, center = view_shift, config.view_shift_center
        if shift is None:
            shift, center = probe_shift, config.probe_shift_center
        if shift is not None:
            terms["view_shift"] = (shift.float().to(device) - center) / config.view_shift_scale
        if noise_shift is not None:
            log_shift = noise_shift.float().to(device).clamp_min(1e-12).log()
            standard = (log_shift - config.noise_shift_center) / config.noise_shift_scale
            terms["noise_shift"] = standard.abs() if config.noise_shift_two_sided else standard
        if cola_probs is not None:
            cola_probs = cola_probs.float().to(clip_probs.device)
            clip_top, clip_label = clip_probs.max(dim=-1)
            terms["disagreement"] = (cola_probs.argmax(dim=-1) != clip_label).float()
            terms["confidence_drop"] = clip_top - cola_probs.gather(-1, clip_label.unsqueeze(-1)).squeeze(-1)
        return terms

    def flag(self, scores: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: scores at or above the threshold (never, when disabled)."""
        if not self.config.enabled:
            return torch.zeros_like(scores, dtype=torch.bool)
        return scores >= self.config.threshold


def secret_noise_seed(config: DetectorConfig) -> int:
    """``$COLA_DETECTOR_SEED`` (an integer) when set, else ``config.noise_seed``."""
    value = os.environ.get(SEED_ENVIRONMENT_VARIABLE, "").strip()
    if not value:
        return config.noise_seed
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"${SEED_ENVIRONMENT_VARIABLE} must be an integer (its value is not shown)") from None


def seed_is_secret(config: DetectorConfig) -> bool:
    """Whether the probe seed was set by the deployment (environment, or a non-default ``noise_seed``): reports
    then write ``"secret"`` instead of it."""
    return bool(os.environ.get(SEED_ENVIRONMENT_VARIABLE, "").strip()) or config.noise_seed != 0


def embedding_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B]`` 1 - cos between unit embeddings ``[B, d]``, as ||a - b||^2 / 2 (the same for unit vectors) in
    float32, so fp16 / bf16 embeddings do not lose small shifts to rounding in 1 - a.b."""
    return (a.float() - b.float()).pow(2).sum(-1) / 2.0
