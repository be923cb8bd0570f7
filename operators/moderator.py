"""The moderation operator: decode -> CLIP image encoder -> class scores, for a batch of encoded images.

One instance serves the CLI, the batch job, the stream job and the HTTP endpoint. Build it once per worker (it holds
the model and the encoded class texts) and call :meth:`Moderator.moderate` per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from operators.backbone import ClipBackbone
from operators.config import DecodeConfig, ModelConfig, TaxonomyConfig
from operators.decode import ImageDecoder
from operators.errors import DecodeError
from operators.text_bank import TextBank
from operators.zeroshot import Scores, ZeroShotClassifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Moderation:
    """The model's verdict on one image."""

    label: str
    score: float
    topk: tuple[tuple[str, float], ...]
    method: str

    def topk_records(self) -> list[dict[str, object]]:
        return [{"label": label, "score": score} for label, score in self.topk]


class Moderator:
    """Decode + classify batches of encoded images."""

    def __init__(self, backbone: ClipBackbone, *, taxonomy: TaxonomyConfig, decode: DecodeConfig | None = None) -> None:
        self.backbone = backbone
        self.taxonomy = taxonomy
        self.bank = TextBank.build(backbone, taxonomy)
        self.zero_shot = ZeroShotClassifier(self.bank, logit_scale=backbone.logit_scale)
        self.decoder = ImageDecoder(size=backbone.geometry.size, config=decode)
        self.batch_size = 32

    @classmethod
    def from_config(cls, *, model: ModelConfig, taxonomy: TaxonomyConfig,
                    decode: DecodeConfig | None = None) -> Moderator:
        moderator = cls(ClipBackbone.load(model), taxonomy=taxonomy, decode=decode)
        moderator.batch_size = model.batch_size
        return moderator

    @property
    def model_name(self) -> str:
        return self.backbone.name

    def scores(self, pixels: torch.Tensor) -> Scores:
        """Plain CLIP class probabilities for ``[B, 3, S, S]`` pixels in [0, 1]."""
        return self.zero_shot.scores(self.backbone.encode_images(pixels))

    def classify_pixels(self, pixels: torch.Tensor) -> list[Moderation]:
        results: list[Moderation] = []
        for start in range(0, pixels.shape[0], self.batch_size):
            scores = self.scores(pixels[start : start + self.batch_size])
            for topk in scores.top_k(self.taxonomy.top_k):
                results.append(Moderation(label=topk[0][0], score=topk[0][1], topk=tuple(topk), method="clip"))
        return results

    def moderate(self, items: Sequence[bytes]) -> list[Moderation | DecodeError]:
        """One result per input, in order: a :class:`Moderation`, or the :class:`DecodeError` that stopped it."""
        decoded = self.decoder.decode(items)
        results: list[Moderation | DecodeError] = [*[DecodeError("not decoded")] * len(items)]
        for index, error in decoded.errors.items():
            results[index] = error
        for index, verdict in zip(decoded.indices, self.classify_pixels(decoded.pixels), strict=True):
            results[index] = verdict
        return results

    def close(self) -> None:
        self.decoder.close()
