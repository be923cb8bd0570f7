"""The moderation operator: decode -> CLIP image encoder -> plain CLIP / COLA / cascade scores -> detector.

One instance serves the CLI, the batch job, the stream job and the HTTP endpoint. Build it once per worker (it holds
the model, the encoded class texts, the text subspace and the view parameters) and call :meth:`Moderator.moderate`
per batch.

Methods:

* ``clip``: plain zero-shot CLIP (one encoder pass per image).
* ``cola``: COLA on every image (N encoder passes per image).
* ``cascade``: plain CLIP first; COLA re-scores only the images the detector's single-pass pre-screen flags or
  whose CLIP top-1 minus top-2 probability is below ``cola.cascade_margin``, so clean, confidently classified traffic
  costs little more than plain CLIP. The original view's embedding is reused, so an escalated image costs N passes.
  With ``detector.probe`` every image also gets COLA's first augmented view encoded (reused by COLA), which makes
  the pre-screen far sharper at the price of a second encoder pass. ``detector.noise_probe`` instead (or as well)
  encodes every image once more with a small fixed noise added: the sharpest pre-screen on the reference model,
  for the same one extra pass (not reusable by COLA).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from cola_moderation.operators.backbone import ClipBackbone
from cola_moderation.operators.cola import ColaScorer, view_shift_of
from cola_moderation.operators.config import ColaConfig, DecodeConfig, DetectorConfig, ModelConfig, TaxonomyConfig
from cola_moderation.operators.decode import DecodedBatch, ImageDecoder
from cola_moderation.operators.detector import AdversarialDetector, embedding_shift
from cola_moderation.operators.errors import ConfigError, DecodeError
from cola_moderation.operators.text_bank import TextBank
from cola_moderation.operators.zeroshot import Scores, ZeroShotClassifier

log = logging.getLogger(__name__)

Method = Literal["clip", "cola", "cascade"]
METHODS: tuple[str, ...] = ("clip", "cola", "cascade")


@dataclass(frozen=True)
class Moderation:
    """The model's verdict on one image."""

    label: str
    score: float
    topk: tuple[tuple[str, float], ...]
    method: str
    """The configured method (``clip``, ``cola`` or ``cascade``)."""
    adversarial_score: float = 0.0
    """Detector score in [0, 1]; higher = more likely an adversarially manipulated upload."""
    suspected_adversarial: bool = False
    """``adversarial_score >= detector.threshold``."""
    cola_applied: bool = False
    """Whether COLA produced the label (always for ``cola``, for escalated images under ``cascade``)."""

    def topk_records(self) -> list[dict[str, object]]:
        return [{"label": label, "score": score} for label, score in self.topk]


@dataclass(frozen=True)
class BatchVerdict:
    """Tensors behind a batch of :class:`Moderation`: final ``scores``, detector ``adversarial_scores`` ``[B]``,
    ``suspected`` ``[B]`` bool and ``cola_applied`` ``[B]`` bool (used by evaluation code that needs numbers)."""

    scores: Scores
    adversarial_scores: torch.Tensor
    suspected: torch.Tensor
    cola_applied: torch.Tensor


class Moderator:
    """Decode + classify batches of encoded images with the configured method, and score them for manipulation."""

    def __init__(self, backbone: ClipBackbone, *, taxonomy: TaxonomyConfig, decode: DecodeConfig | None = None,
                 method: str = "clip", cola: ColaConfig | None = None, detector: DetectorConfig | None = None,
                 bank: TextBank | None = None) -> None:
        """``bank``: precomputed class text embeddings for ``taxonomy`` (default: encode the taxonomy's texts)."""
        if method not in METHODS:
            raise ConfigError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
        self.backbone = backbone
        self.taxonomy = taxonomy
        self.method = method
        self.bank = bank if bank is not None else TextBank.build(backbone, taxonomy)
        if self.bank.labels != taxonomy.label_names:
            raise ConfigError("Moderator: the text bank's labels differ from taxonomy.labels")
        self.zero_shot = ZeroShotClassifier(self.bank, logit_scale=backbone.logit_scale)
        self.cola = ColaScorer(self.bank, cola or ColaConfig(), logit_scale=backbone.logit_scale)
        self.detector = AdversarialDetector(detector)
        self.decoder = ImageDecoder(size=backbone.geometry.size, config=decode)
        self.batch_size = 32

    @classmethod
    def from_config(cls, *, model: ModelConfig, taxonomy: TaxonomyConfig, decode: DecodeConfig | None = None,
                    method: str = "clip", cola: ColaConfig | None = None,
                    detector: DetectorConfig | None = None) -> Moderator:
        moderator = cls(ClipBackbone.load(model), taxonomy=taxonomy, decode=decode, method=method, cola=cola,
                        detector=detector)
        moderator.batch_size = model.batch_size
        return moderator

    @property
    def model_name(self) -> str:
        return self.backbone.name

    def scores(self, pixels: torch.Tensor) -> Scores:
        """Plain CLIP class probabilities for ``[B, 3, S, S]`` pixels in [0, 1]."""
        return self.zero_shot.scores(self.backbone.encode_images(pixels))

    def noise_shift(self, pixels: torch.Tensor, features: torch.Tensor | None = None, *,
                    grad: bool = False) -> torch.Tensor:
        """``[B]`` the noise probe's signal: 1 - cos between the embeddings of ``pixels`` with and without the
        detector's fixed noise (``features``: the embeddings without it, when already computed)."""
        if features is None:
            features = self.backbone.encode_images(pixels, grad=grad)
        return embedding_shift(features, self.backbone.encode_images(self.detector.noisy(pixels), grad=grad))

    def verdict(self, pixels: torch.Tensor, *, method: str | None = None) -> BatchVerdict:
        """Score one batch of ``[B, 3, S, S]`` pixels in [0, 1] with ``method`` (default: the configured one)."""
        method = method or self.method
        features = self.backbone.encode_images(pixels)
        clip = self.zero_shot.scores(features)
        residual = self.cola.subspace.residual_energy(features)
        known = features.unsqueeze(1)
        shift = None
        if self.detector.config.enabled and self.detector.config.probe and method != "cola" \
                and self.cola.view_count > 1:
            known = torch.stack([features, self.cola.encode_view(self.backbone, pixels, 1)], dim=1)
            shift = view_shift_of(known)
        noise = None
        if self.detector.config.enabled and self.detector.config.noise_probe:
            noise = self.noise_shift(pixels, features)
        adversarial = self.detector.score(residual, clip.probs, probe_shift=shift, noise_shift=noise)
        batch = pixels.shape[0]
        if method == "clip":
            escalate = torch.zeros(batch, dtype=torch.bool, device=features.device)
        elif method == "cola":
            escalate = torch.ones(batch, dtype=torch.bool, device=features.device)
        else:
            escalate = self.detector.flag(adversarial) | (clip.margin() < self.cola.config.cascade_margin)
        probs = clip.probs.clone()
        index = escalate.nonzero().squeeze(-1)
        if index.numel():
            with torch.inference_mode():
                cola = self.cola.score_pixels(self.backbone, pixels[index.to(pixels.device)], known=known[index])
            probs[index] = cola.scores.probs
            adversarial[index] = self.detector.score(
                residual[index], clip.probs[index], view_shift=cola.view_shift,
                noise_shift=None if noise is None else noise[index], cola_probs=cola.scores.probs)
        return BatchVerdict(scores=Scores(labels=clip.labels, probs=probs), adversarial_scores=adversarial,
                            suspected=self.detector.flag(adversarial), cola_applied=escalate)

    def classify_pixels(self, pixels: torch.Tensor) -> list[Moderation]:
        results: list[Moderation] = []
        for start in range(0, pixels.shape[0], self.batch_size):
            verdict = self.verdict(pixels[start : start + self.batch_size])
            rows = zip(verdict.scores.top_k(self.taxonomy.top_k), verdict.adversarial_scores.tolist(),
                       verdict.suspected.tolist(), verdict.cola_applied.tolist(), strict=True)
            for topk, adversarial, suspected, applied in rows:
                results.append(Moderation(label=topk[0][0], score=topk[0][1], topk=tuple(topk), method=self.method,
                                          adversarial_score=float(adversarial), suspected_adversarial=bool(suspected),
                                          cola_applied=bool(applied)))
        return results

    def moderate(self, items: Sequence[bytes]) -> list[Moderation | DecodeError]:
        """One result per input, in order: a :class:`Moderation`, or the :class:`DecodeError` that stopped it."""
        return self.moderate_decoded(self.decoder.decode(items), len(items))

    def moderate_decoded(self, decoded: DecodedBatch, count: int) -> list[Moderation | DecodeError]:
        """Like :meth:`moderate` for inputs decoded elsewhere (e.g. in the batch job's CPU tasks); ``count`` is the
        number of inputs ``decoded`` covers."""
        results: list[Moderation | DecodeError] = [*[DecodeError("not decoded")] * count]
        for index, error in decoded.errors.items():
            results[index] = error
        for index, verdict in zip(decoded.indices, self.classify_pixels(decoded.pixels), strict=True):
            results[index] = verdict
        return results

    def close(self) -> None:
        self.decoder.close()
