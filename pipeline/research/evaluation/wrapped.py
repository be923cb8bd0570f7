"""Plain zero-shot CLIP as a ``torch.nn.Module`` from pixels to logits, for third-party attack libraries
(torchattacks, AutoAttack) that expect ``model(images in [0, 1]) -> logits``.

The normalisation happens inside (``Backbone.encode_images``), exactly as in the harness's own attacks, so an
external attack and :func:`cola_moderation.pipeline.research.attacks.pgd_linf` attack the same function.
"""

from __future__ import annotations

import torch

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier


class ZeroShotLogits(torch.nn.Module):
    """``forward(pixels [B, 3, S, S] in [0, 1]) -> logits [B, K]`` (differentiable w.r.t. the pixels).

    The backbone's image tower is registered as a sub-module (frozen), so libraries that look up the model's device
    through its parameters find it.
    """

    def __init__(self, backbone: Backbone, classifier: ZeroShotClassifier) -> None:
        super().__init__()
        self.image_tower = backbone.image_tower
        self._backbone = backbone
        self._classifier = classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._classifier.logits(self._backbone.encode_images(pixels, grad=True))
