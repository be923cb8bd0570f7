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

import torch

from cola_moderation.operators.config import DetectorConfig


class AdversarialDetector:
    """Scores a batch from CLIP probabilities ``[B, K]`` and residual energies ``[B]``, plus optional view, probe
    and noise shifts ``[B]`` and COLA probabilities ``[B, K]``. Device- and batch-agnostic; never records
    gradients."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._noise: dict[tuple[tuple[int, ...], torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def noisy(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, C, S, S]`` pixels in [0, 1] plus the noise probe's fixed pattern, clamped to [0, 1]."""
        key = (tuple(pixels.shape[1:]), pixels.device, pixels.dtype)
        pattern = self._noise.get(key)
        if pattern is None:
            generator = torch.Generator().manual_seed(self.config.noise_seed)
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
        config = self.config
        residual_energy, clip_probs = residual_energy.detach().float(), clip_probs.detach().float()
        if not config.enabled:
            return torch.zeros_like(residual_energy)
        logit = config.bias + config.residual_weight * (
            (residual_energy - config.residual_center) / config.residual_scale)
        shift, center = view_shift, config.view_shift_center
        if shift is None:
            shift, center = probe_shift, config.probe_shift_center
        if shift is not None:
            shift = shift.detach().float().to(logit.device)
            logit = logit + config.view_shift_weight * (shift - center) / config.view_shift_scale
        if noise_shift is not None:
            log_shift = noise_shift.detach().float().to(logit.device).clamp_min(1e-12).log()
            logit = logit + config.noise_shift_weight * (log_shift - config.noise_shift_center) \
                / config.noise_shift_scale
        if cola_probs is not None:
            cola_probs = cola_probs.detach().float().to(clip_probs.device)
            clip_top, clip_label = clip_probs.max(dim=-1)
            disagreement = (cola_probs.argmax(dim=-1) != clip_label).float()
            drop = clip_top - cola_probs.gather(-1, clip_label.unsqueeze(-1)).squeeze(-1)
            logit = logit + config.disagreement_weight * disagreement + config.confidence_drop_weight * drop
        return torch.sigmoid(logit)

    def flag(self, scores: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: scores at or above the threshold (never, when disabled)."""
        if not self.config.enabled:
            return torch.zeros_like(scores, dtype=torch.bool)
        return scores >= self.config.threshold


def embedding_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B]`` 1 - cos between unit embeddings ``[B, d]``, as ||a - b||^2 / 2 (the same for unit vectors) in
    float32, so fp16 / bf16 embeddings do not lose small shifts to rounding in 1 - a.b."""
    return (a.float() - b.float()).pow(2).sum(-1) / 2.0
