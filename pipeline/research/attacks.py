"""L-inf projected gradient descent (PGD) on pixel inputs in [0, 1], for robustness evaluation.

The attacked function takes raw pixels; the model's normalisation happens inside it (``Backbone.encode_images``
normalises), so the eps ball and the [0, 1] box are in pixel space as in the papers. Loss functions are built here
for plain CLIP (the gray-box setting of the COLA paper) and for COLA itself (adaptive: gradients through the views,
projection and OT, with optional EOT over freshly drawn views at every step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.defences.cola.scorer import ColaScorer
from cola_moderation.operators.defences.cola.views import sample_view_params
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier

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


def clip_cross_entropy(backbone: Backbone, classifier: ZeroShotClassifier) -> LossFn:
    """Cross-entropy of plain zero-shot CLIP (gray-box attack on CLIP, transferred to COLA)."""

    def loss(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = classifier.logits(backbone.encode_images(pixels, grad=True))
        return F.cross_entropy(logits, labels.to(logits.device), reduction="none")

    return loss


def cola_cross_entropy(backbone: Backbone, scorer: ColaScorer, *, eot_seed: int | None = None) -> LossFn:
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


def clip_cw_margin(backbone: Backbone, classifier: ZeroShotClassifier, *, kappa: float | None = None) -> LossFn:
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


LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""pixels ``[B, 3, S, S]`` in [0, 1] -> class logits ``[B, K]`` of the attacked function (differentiable)."""
LOSSES = ("ce", "dlr", "cw")


def logits_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example loss ``[B]`` that an untargeted attack maximises, from logits ``[B, K]`` and labels ``[B]``.

    ``ce``: cross-entropy. ``cw``: Carlini-Wagner margin, best wrong logit minus the true logit. ``dlr``: the
    difference-of-logits ratio of Croce & Hein (2020), the CW margin divided by the gap between the largest and the
    third-largest logit, so it is invariant to the logits' scale (needs K >= 3).
    """
    labels = labels.to(logits.device)
    if kind == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    true = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    margin = others.max(dim=1).values - true
    if kind == "cw":
        return margin
    if kind == "dlr":
        if logits.shape[1] < 3:
            raise ValueError("logits_loss: the DLR loss needs at least 3 classes")
        ranked = logits.sort(dim=1, descending=True).values
        return margin / (ranked[:, 0] - ranked[:, 2] + 1e-12)
    raise ValueError(f"logits_loss: kind must be one of {', '.join(LOSSES)}, got {kind!r}")


def loss_of_logits(logits_fn: LogitsFn, kind: str) -> LossFn:
    """A :data:`LossFn` for :func:`pgd_linf` from a logits function and a loss kind (see :func:`logits_loss`)."""

    def loss(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return logits_loss(kind, logits_fn(pixels), labels)

    return loss


def round_to_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] rounded to the nearest multiple of 1/255: what an uploaded 8-bit image can carry. For inputs
    on the 8-bit grid and eps a multiple of 1/255 the result stays in the eps ball."""
    return (pixels * 255.0).round().clamp(0, 255) / 255.0


def _oscillating(history: torch.Tensor, step: int, window: int, rho: float) -> torch.Tensor:
    """``[B]`` bool: the loss rose in at most ``rho * window`` of the last ``window`` steps (APGD's condition 1)."""
    rises = torch.zeros(history.shape[1], device=history.device)
    for back in range(window):
        rises += (history[step - back] > history[step - back - 1]).float()
    return rises <= window * rho


def apgd_linf(logits_fn: LogitsFn, pixels: torch.Tensor, labels: torch.Tensor, *, eps: float, loss: str = "ce",
              steps: int = 100, restarts: int = 1, rho: float = 0.75,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Untargeted L-inf Auto-PGD (Croce & Hein, ICML 2020, as in AutoAttack's ``apgd-ce`` / ``apgd-dlr``).

    Step size starts at 2 eps and is halved per image at checkpoints (after 22% of the steps, then at shrinking
    intervals down to 6%) when the loss rose in fewer than ``rho`` of the steps since the last checkpoint, or when
    the best loss did not improve and the step was not halved last time; a halving restarts from the best point.
    Steps use momentum 0.75. ``restarts`` > 1 re-runs from fresh random starts the images still classified correctly.

    Returns detached pixels: per image the first point found that ``logits_fn`` misclassifies, else the point of
    highest loss. Random starts come from ``generator`` on the CPU.
    """
    if eps < 0 or steps < 1 or restarts < 1:
        raise ValueError(f"apgd_linf: need eps >= 0, steps >= 1, restarts >= 1; got {eps}, {steps}, {restarts}")
    original = pixels.detach()
    if eps == 0:
        return original.clone()
    labels = labels.to(original.device)
    result = original.clone()
    remaining = torch.arange(original.shape[0], device=original.device)
    for _ in range(restarts):
        if remaining.numel() == 0:
            break
        found, fooled = _apgd_run(logits_fn, original[remaining], labels[remaining], eps=eps, loss=loss,
                                  steps=steps, rho=rho, generator=generator)
        result[remaining] = found
        remaining = remaining[~fooled]
    return result


def _loss_and_grad(logits_fn: LogitsFn, x: torch.Tensor, labels: torch.Tensor,
                   loss: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_fn(x)
        values = logits_loss(loss, logits, labels)
        (gradient,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), logits.detach(), gradient.detach()


def _apgd_run(logits_fn: LogitsFn, x: torch.Tensor, labels: torch.Tensor, *, eps: float, loss: str, steps: int,
              rho: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run from a random start: (adversarial pixels, ``[B]`` bool misclassified by ``logits_fn``)."""
    batch = x.shape[0]
    shape = (batch,) + (1,) * (x.dim() - 1)
    first_check, min_check, decrease = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
    noise = noise / noise.flatten(1).abs().max(dim=1).values.clamp_min(1e-12).view(shape)
    low, high = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    current = torch.min(torch.max(x + eps * noise, low), high)
    values, logits, gradient = _loss_and_grad(logits_fn, current, labels, loss)
    fooled = logits.argmax(1) != labels
    best_adversarial = current.clone()
    best, best_loss, best_gradient = current.clone(), values.clone(), gradient.clone()
    history = torch.zeros(steps + 1, batch, device=x.device)
    history[0] = values
    step_size = torch.full(shape, 2.0 * eps, device=x.device, dtype=x.dtype)
    previous = current.clone()
    window, since_check = first_check, 0
    loss_at_check = best_loss.clone()
    halved_last = torch.ones(batch, dtype=torch.bool, device=x.device)  # no "no improvement" cut at the first check
    for step in range(steps):
        momentum = 0.75 if step > 0 else 1.0
        change = current - previous
        previous = current
        proposal = torch.min(torch.max(current + step_size * gradient.sign(), low), high)
        current = torch.min(torch.max(current + (proposal - current) * momentum + change * (1 - momentum), low), high)
        values, logits, gradient = _loss_and_grad(logits_fn, current, labels, loss)
        wrong = logits.argmax(1) != labels
        newly = wrong & ~fooled
        best_adversarial[newly] = current[newly]
        fooled |= wrong
        history[step + 1] = values
        better = values > best_loss
        best[better], best_gradient[better], best_loss[better] = current[better], gradient[better], values[better]
        since_check += 1
        if since_check == window:
            halve = _oscillating(history, step + 1, window, rho) | (~halved_last & (loss_at_check >= best_loss))
            halved_last, loss_at_check = halve.clone(), best_loss.clone()
            if halve.any():
                step_size[halve] /= 2.0
                current[halve], gradient[halve] = best[halve], best_gradient[halve]
            window, since_check = max(window - decrease, min_check), 0
    return torch.where(fooled.view(shape), best_adversarial, best), fooled


ScreenFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""pixels ``[B, 3, S, S]`` -> (class logits ``[B, K]``, detector logit ``[B]``), both differentiable."""


def detector_aware_pgd(screen: ScreenFn, pixels: torch.Tensor, labels: torch.Tensor, *, eps: float,
                       threshold_logit: float, gate_margin: float = 0.0, steps: int = 100,
                       step_size: float | None = None, slack: float = 0.25,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Selective, orthogonal L-inf PGD against a classifier guarded by a detector (Bryniarski et al., ICLR 2022).

    Per image and step: while the detector logit is below ``threshold_logit - slack`` the step follows the label
    loss's (cross-entropy) gradient with its component that would raise the detector removed; otherwise it follows
    the gradient that lowers the detector logit. An image counts as evading when it is misclassified, its top-1
    minus top-2 probability is at least ``gate_margin`` (a cascade keeps such answers) and the detector stays below
    ``threshold_logit - slack``; the evading point with the lowest detector logit is kept, else the last iterate.
    ``step_size`` defaults to 2.5 eps / steps. Returns detached pixels.
    """
    if eps < 0 or steps < 1:
        raise ValueError(f"detector_aware_pgd: need eps >= 0 and steps >= 1, got {eps}, {steps}")
    original = pixels.detach()
    if eps == 0:
        return original.clone()
    labels = labels.to(original.device)
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    low, high = (original - eps).clamp(0, 1), (original + eps).clamp(0, 1)
    noise = torch.rand(original.shape, generator=generator, dtype=original.dtype).to(original.device) * 2 - 1
    current = torch.min(torch.max(original + 0.5 * eps * noise, low), high)
    kept = current.clone()
    kept_logit = torch.full((original.shape[0],), float("inf"), device=original.device)
    flat = (original.shape[0], -1)
    for _ in range(steps + 1):
        x = current.detach().requires_grad_(True)
        with torch.enable_grad():
            logits, detector = screen(x)
            label_loss = F.cross_entropy(logits, labels, reduction="none")
            (label_grad,) = torch.autograd.grad(label_loss.sum(), x, retain_graph=True)
            (detector_grad,) = torch.autograd.grad(detector.sum(), x)
        with torch.no_grad():
            detector = detector.detach().float()
            quiet = detector < threshold_logit - slack
            probs = logits.detach().softmax(-1)
            top = probs.topk(2, dim=-1).values
            evading = quiet & (probs.argmax(-1) != labels) & (top[:, 0] - top[:, 1] >= gate_margin)
            better = evading & (detector < kept_logit)
            kept[better], kept_logit[better] = current[better], detector[better]
            unit = detector_grad.view(flat) / detector_grad.view(flat).norm(dim=1, keepdim=True).clamp_min(1e-12)
            along = (label_grad.view(flat) * unit).sum(dim=1, keepdim=True).clamp_min(0)
            orthogonal = (label_grad.view(flat) - along * unit).view_as(label_grad)
            direction = torch.where(quiet.view(-1, *[1] * (original.dim() - 1)), orthogonal, -detector_grad)
            current = torch.min(torch.max(current + alpha * direction.sign(), low), high)
    found = torch.isfinite(kept_logit)
    return torch.where(found.view(-1, *[1] * (original.dim() - 1)), kept, current).detach()
