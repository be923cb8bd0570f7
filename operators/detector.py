"""Adversarial-upload detector: one score in [0, 1] per image from signals the operator computes anyway.

Signals (no extra encoder pass):

* ``residual_energy``: the share of the image embedding outside the text subspace (COLA's projection removes it);
  perturbations crafted against CLIP push embeddings off the span of the class texts.
* ``disagreement``: plain CLIP (original view) and COLA (views + OT) predict different labels. Only where COLA ran.
* ``confidence_drop``: CLIP's top-1 probability minus COLA's probability for that same label. A perturbation tuned
  to the original pixel grid loses much of its effect on resampled views. Only where COLA ran.

score = sigmoid(bias + w_r (residual - center) / scale + w_d disagreement + w_c confidence_drop), and
``suspected_adversarial`` = score >= threshold. The weights are config knobs; defaults are fitted on the reference
model (clean vs 4/255 PGD, see benchmarks/robustness_sweep.py).
"""

from __future__ import annotations

import torch

from operators.config import DetectorConfig


class AdversarialDetector:
    """Scores images from CLIP probabilities ``[B, K]``, residual energies ``[B]`` and, where COLA ran, COLA
    probabilities ``[B, K]``. Device- and batch-agnostic; never needs gradients."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def score(self, residual_energy: torch.Tensor, clip_probs: torch.Tensor,
              cola_probs: torch.Tensor | None = None) -> torch.Tensor:
        """``[B]`` scores in [0, 1] (zeros when the detector is disabled). Without ``cola_probs`` only the
        single-pass signal counts (the cascade's cheap pre-screen)."""
        config = self.config
        residual_energy, clip_probs = residual_energy.detach().float(), clip_probs.detach().float()
        if not config.enabled:
            return torch.zeros_like(residual_energy)
        logit = config.bias + config.off_subspace_weight * (
            (residual_energy - config.off_subspace_center) / config.off_subspace_scale)
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
