"""L-inf projected gradient descent (PGD) on pixel inputs in [0, 1], for robustness evaluation.

The attacked function takes raw pixels; the model's normalisation happens inside it (``ClipBackbone.encode_images``
normalises), so the eps ball and the [0, 1] box are in pixel space as in the papers. Loss functions are built here
for plain CLIP (the gray-box setting of the COLA paper) and for COLA itself (adaptive: gradients through the views,
projection and OT, with optional EOT over freshly drawn views at every step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from cola_moderation.operators.backbone import ClipBackbone
from cola_moderation.operators.cola import ColaScorer
from cola_moderation.operators.views import sample_view_params
from cola_moderation.operators.zeroshot import ZeroShotClassifier

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(pixels ``[B, 3, S, S]`` in [0, 1], labels ``[B]``) -> per-example loss ``[B]`` that the attack maximises."""


def pgd_linf(loss: LossFn, pixels: torch.Tensor, labels: torch.Tensor, *, eps: float, steps: int = 10,
             step_size: float | None = None, random_start: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Untargeted L-inf PGD (Madry et al.): ``steps`` signed-gradient ascent steps on ``loss``, each followed by
    projection onto the eps ball around ``pixels`` and the [0, 1] box. ``step_size`` defaults to 2.5 eps / steps;
    the random start is uniform in the eps ball (drawn from ``generator`` on the CPU, for reproducibility).

    Returns detached adversarial pixels of the same shape, device and dtype. ``eps = 0`` returns ``pixels``.
    """
    if eps < 0 or steps < 0:
        raise ValueError(f"pgd_linf: eps and steps must be >= 0, got eps={eps}, steps={steps}")
    original = pixels.detach()
    if eps == 0 or steps == 0:
        return original.clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    adversarial = original.clone()
    if random_start:
        noise = torch.rand(original.shape, generator=generator, dtype=original.dtype) * 2 - 1
        adversarial = (adversarial + eps * noise.to(original.device)).clamp(0, 1)
    for _ in range(steps):
        adversarial.requires_grad_(True)
        with torch.enable_grad():
            value = loss(adversarial, labels).sum()
            (gradient,) = torch.autograd.grad(value, adversarial)
        with torch.no_grad():
            adversarial = adversarial.detach() + alpha * gradient.sign()
            adversarial = torch.min(torch.max(adversarial, original - eps), original + eps).clamp(0, 1)
    return adversarial.detach()


def clip_cross_entropy(backbone: ClipBackbone, classifier: ZeroShotClassifier) -> LossFn:
    """Cross-entropy of plain zero-shot CLIP (gray-box attack on CLIP, transferred to COLA)."""

    def loss(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = classifier.logits(backbone.encode_images(pixels, grad=True))
        return F.cross_entropy(logits, labels.to(logits.device), reduction="none")

    return loss


def cola_cross_entropy(backbone: ClipBackbone, scorer: ColaScorer, *, eot_seed: int | None = None) -> LossFn:
    """Cross-entropy of COLA's confidence softmax(-d / temperature) (adaptive attack through the whole COLA path).

    ``eot_seed=None`` attacks the deployed, fixed views; an integer draws fresh views from a generator with that
    seed at every call (expectation over transformation).
    """
    generator = None if eot_seed is None else torch.Generator().manual_seed(eot_seed)

    def loss(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        params = None if generator is None else sample_view_params(scorer.config.views, generator=generator)
        scores = scorer.score_pixels(backbone, pixels, grad=True, params=params)
        logits = -scores.distances / scorer.temperature
        return F.cross_entropy(logits, labels.to(logits.device), reduction="none")

    return loss


def clip_cw_margin(backbone: ClipBackbone, classifier: ZeroShotClassifier, *, kappa: float | None = None) -> LossFn:
    """Carlini-Wagner margin of plain zero-shot CLIP for L-inf PGD ("CW" in robustness tables): the best wrong
    logit minus the true logit, per example. ``kappa``: stop pushing once the margin exceeds it (``None``: never).

    Unlike cross-entropy it does not saturate on confidently classified images, so it is the usual second attack
    to check that a cross-entropy PGD result is not an artefact of vanishing gradients.
    """

    def loss(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = classifier.logits(backbone.encode_images(pixels, grad=True))
        labels = labels.to(logits.device)
        true = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
        others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
        margin = others.max(dim=1).values - true
        return margin if kappa is None else margin.clamp(max=kappa)

    return loss
