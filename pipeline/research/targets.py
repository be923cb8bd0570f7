"""What attacks differentiate: the deployed methods' logits and the detector's single-pass logit, as functions of
the pixels (attacker-side views of :class:`~cola_moderation.operators.moderator.Moderator`; serving never calls
them). Each follows the deployed path exactly: COLA with its fixed, seeded views, the cascade's gate evaluated
without gradient as the registry's :class:`~cola_moderation.operators.defences.registry.Defence` decides it.
"""

from __future__ import annotations

import torch

from cola_moderation.operators.detector.score import AdversarialDetector
from cola_moderation.operators.moderator import Moderator


def screen_logits(moderator: Moderator, pixels: torch.Tensor, *,
                  detector: AdversarialDetector | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``[B, K]`` plain CLIP logits, ``[B]`` the detector's single-pass (pre-COLA) logit), both differentiable in
    ``pixels``. The detector logit is the cascade's final score for every image it does not send to COLA; a
    detector-aware attack descends it. ``detector``: whose probe noise to use (an attacker's guess)."""
    screen = moderator.prescreen(pixels, grad=True, detector=detector)
    probs = moderator.zero_shot.scores_of_logits(screen.logits).probs
    logit = moderator.detector.logit(screen.residual, probs, probe_shift=screen.probe_shift,
                                     noise_shift=screen.noise_shift)
    return screen.logits, logit


def attack_logits(moderator: Moderator, pixels: torch.Tensor, *, method: str | None = None) -> torch.Tensor:
    """``[B, K]`` differentiable logits of the deployed ``method`` (default: the moderator's): COLA's
    -d / temperature where the method's gate sends an image to COLA, plain CLIP's logits elsewhere."""
    defence = moderator.defence_of(method)
    cola = moderator.cola
    if defence.always:
        return -cola.score_pixels(moderator.backbone, pixels, grad=True).distances / cola.temperature
    logits = moderator.zero_shot.logits(moderator.backbone.encode_images(pixels, grad=True))
    with torch.no_grad():
        escalate = moderator.verdict(pixels.detach(), method=defence.name).cola_applied
    index = escalate.nonzero().squeeze(-1)
    if not index.numel():
        return logits
    robust = -cola.score_pixels(moderator.backbone, pixels[index], grad=True).distances / cola.temperature
    return logits.index_put((index,), robust.to(logits.dtype))
