"""The moderation operator: decode -> CLIP image encoder -> plain CLIP / COLA / cascade scores -> detector.

One instance serves the CLI, the batch job, the stream job and the HTTP endpoint. Build it once per worker (it holds
the model, the encoded class texts, the text subspace and the view parameters) and call :meth:`Moderator.moderate`
per batch.

Methods (``clip``, ``cola``, ``cascade``) are the registry of :mod:`cola_moderation.operators.defences.registry`:
each decides which images COLA re-scores after plain CLIP's pass. With ``detector.probe`` every image also gets
COLA's first augmented view encoded (reused by COLA), which makes the cascade's pre-screen far sharper at the price
of a second encoder pass. ``detector.noise_probe`` instead (or as well) encodes every image once more with a small
fixed noise added: the sharpest pre-screen on the reference model, for the same one extra pass (not reusable by
COLA). The differentiable versions of these paths, which attacks use, are in
:mod:`cola_moderation.pipeline.research.targets`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import ColaConfig, DecodeConfig, DetectorConfig, ModelConfig, TaxonomyConfig
from cola_moderation.operators.decode import DecodedBatch, ImageDecoder
from cola_moderation.operators.defences.cola.scorer import ColaScorer, view_shift_of
from cola_moderation.operators.defences.registry import Defence, GateInputs, get_defence
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import Scores, ZeroShotClassifier
from cola_moderation.operators.detector.score import AdversarialDetector, embedding_shift
from cola_moderation.operators.errors import ConfigError, DecodeError

log = logging.getLogger(__name__)

DECODE_AHEAD_MIN = 8
""":meth:`Moderator.moderate` overlaps decoding with encoding in chunks of at least this many inputs (2 cores, 32
JPEGs, ViT-B/32 shape, medians of 8 side-by-side runs: ours / encoder alone 0.945 -> 0.99 fp32, 0.865 -> 0.96 bf16;
docs/benchmarks.md)."""


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
    frame: int = 0
    """Index in its file of the frame this verdict is about (animated / multi-page images)."""
    frame_count: int = 1
    """Frames in the input's file (1 for a still image)."""
    frames: tuple[Moderation, ...] = ()
    """Animated inputs: the verdict of every sampled frame, in frame order (this one is the first of them); the
    policy picks the deciding frame (:meth:`~cola_moderation.operators.policy.Policy.decide_frames`)."""

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


@dataclass(frozen=True)
class Prescreen:
    """Plain CLIP's pass over a batch: ``features`` ``[B, d]``, ``logits`` ``[B, K]``, ``residual`` energy ``[B]``,
    ``known`` view embeddings ``[B, k, d]`` (the original, plus the probe view with ``detector.probe``), and the
    detector's single-pass signals ``probe_shift`` / ``noise_shift`` ``[B]`` (``None`` when off)."""

    features: torch.Tensor
    logits: torch.Tensor
    residual: torch.Tensor
    known: torch.Tensor
    probe_shift: torch.Tensor | None
    noise_shift: torch.Tensor | None


class Moderator:
    """Decode + classify batches of encoded images with the configured method, and score them for manipulation."""

    def __init__(self, backbone: Backbone, *, taxonomy: TaxonomyConfig, decode: DecodeConfig | None = None,
                 method: str = "clip", cola: ColaConfig | None = None, detector: DetectorConfig | None = None,
                 bank: TextBank | None = None) -> None:
        """``bank``: precomputed class text embeddings for ``taxonomy`` (default: encode the taxonomy's texts)."""
        self.defence = get_defence(method)
        self.backbone = backbone
        self.taxonomy = taxonomy
        self.method = method
        self.bank = bank if bank is not None else TextBank.build(backbone, taxonomy)
        if self.bank.labels != taxonomy.label_names:
            raise ConfigError("Moderator: the text bank's labels differ from taxonomy.labels")
        self.zero_shot = ZeroShotClassifier(self.bank, logit_scale=backbone.logit_scale, logit_bias=backbone.logit_bias)
        self.cola = ColaScorer(self.bank, cola or ColaConfig(), logit_scale=backbone.logit_scale)
        self.detector = AdversarialDetector(detector)
        self.decoder = ImageDecoder(size=backbone.geometry.size, config=decode)
        self.batch_size = 32

    @classmethod
    def from_config(cls, *, model: ModelConfig, taxonomy: TaxonomyConfig, decode: DecodeConfig | None = None,
                    method: str = "clip", cola: ColaConfig | None = None,
                    detector: DetectorConfig | None = None) -> Moderator:
        moderator = cls(load_backbone(model), taxonomy=taxonomy, decode=decode, method=method, cola=cola,
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
                    grad: bool = False, detector: AdversarialDetector | None = None) -> torch.Tensor:
        """``[B]`` the noise probe's signal: 1 - cos between the embeddings of ``pixels`` with and without the
        detector's fixed noise (``features``: the embeddings without it, when already computed). ``detector``: whose
        noise pattern to use (default: the deployed one; an attacker without the secret seed uses another)."""
        if features is None:
            features = self.backbone.encode_images(pixels, grad=grad)
        noisy = (detector or self.detector).noisy(pixels)
        return embedding_shift(features, self.backbone.encode_images(noisy, grad=grad))

    def prescreen(self, pixels: torch.Tensor, *, method: str | None = None, grad: bool = False,
                  detector: AdversarialDetector | None = None) -> Prescreen:
        """Plain CLIP's pass and the detector's single-pass signals for ``[B, 3, S, S]`` pixels (differentiable
        with ``grad=True``). ``detector``: whose probe noise to use (default: the deployed detector's)."""
        defence = self.defence_of(method)
        features = self.backbone.encode_images(pixels, grad=grad)
        logits = self.zero_shot.logits(features)
        residual = self.cola.subspace.residual_energy(features)
        known = features.unsqueeze(1)
        shift = None
        config = self.detector.config
        if config.enabled and config.probe and not defence.always and self.cola.view_count > 1:
            view = self.backbone.encode_images(self.cola.views(pixels)[:, 1], grad=grad)
            known = torch.stack([features, view], dim=1)
            shift = view_shift_of(known if grad else known.detach())
        noise = None
        if config.enabled and config.noise_probe:
            noise = self.noise_shift(pixels, features, grad=grad, detector=detector)
        return Prescreen(features=features, logits=logits, residual=residual, known=known, probe_shift=shift,
                         noise_shift=noise)

    def defence_of(self, method: str | None) -> Defence:
        """The registered method ``method`` (default: the configured one)."""
        return self.defence if method is None or method == self.defence.name else get_defence(method)

    def gate(self, screen: Prescreen, clip: Scores, adversarial: torch.Tensor, *,
             method: str | None = None) -> torch.Tensor:
        """``[B]`` bool: which images ``method``'s gate sends to COLA, given plain CLIP's pass."""
        return self.defence_of(method).escalate(GateInputs(
            clip=clip, adversarial=adversarial, flagged=self.detector.flag(adversarial),
            cascade_margin=self.cola.config.cascade_margin))

    def verdict(self, pixels: torch.Tensor, *, method: str | None = None) -> BatchVerdict:
        """Score one batch of ``[B, 3, S, S]`` pixels in [0, 1] with ``method`` (default: the configured one)."""
        screen = self.prescreen(pixels, method=method)
        clip = self.zero_shot.scores_of_logits(screen.logits)
        residual, noise, known = screen.residual, screen.noise_shift, screen.known
        adversarial = self.detector.score(residual, clip.probs, probe_shift=screen.probe_shift, noise_shift=noise)
        escalate = self.gate(screen, clip, adversarial, method=method)
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
        """Moderate ``[N, 3, S, S]`` pixels: float in [0, 1], or uint8 (scaled here, one model batch at a time)."""
        results: list[Moderation] = []
        for start in range(0, pixels.shape[0], self.batch_size):
            chunk = pixels[start : start + self.batch_size]
            if chunk.dtype == torch.uint8:
                chunk = chunk.float().div_(255.0)
            verdict = self.verdict(chunk)
            rows = zip(verdict.scores.top_k(self.taxonomy.top_k), verdict.adversarial_scores.tolist(),
                       verdict.suspected.tolist(), verdict.cola_applied.tolist(), strict=True)
            for topk, adversarial, suspected, applied in rows:
                results.append(Moderation(label=topk[0][0], score=topk[0][1], topk=tuple(topk), method=self.method,
                                          adversarial_score=float(adversarial), suspected_adversarial=bool(suspected),
                                          cola_applied=bool(applied)))
        return results

    def moderate(self, items: Sequence[bytes]) -> list[Moderation | DecodeError]:
        """One result per input, in order: a :class:`Moderation`, or the :class:`DecodeError` that stopped it.

        A call of ``2 * DECODE_AHEAD_MIN`` inputs or more runs in chunks of half a model batch (at least
        ``DECODE_AHEAD_MIN``): the next chunk decodes on the decoder's threads while the model encodes this one
        (decoding and encoding release the GIL). Results do not depend on the chunking: every image's views and probe
        noise are its own."""
        chunk = max(DECODE_AHEAD_MIN, -(-min(len(items), self.batch_size) // 2))
        if len(items) < 2 * DECODE_AHEAD_MIN:
            return self.moderate_decoded(self.decoder.decode(items), len(items))
        parts = [items[start : start + chunk] for start in range(0, len(items), chunk)]
        results: list[Moderation | DecodeError] = []
        with ThreadPoolExecutor(1, thread_name_prefix="cola-decode-ahead") as ahead:
            pending = ahead.submit(self.decoder.decode, parts[0])
            for number, part in enumerate(parts):
                decoded = pending.result()
                if number + 1 < len(parts):
                    pending = ahead.submit(self.decoder.decode, parts[number + 1])
                results.extend(self.moderate_decoded(decoded, len(part)))
        return results

    def moderate_decoded(self, decoded: DecodedBatch, count: int) -> list[Moderation | DecodeError]:
        """Like :meth:`moderate` for inputs decoded elsewhere (e.g. in the batch job's CPU tasks); ``count`` is the
        number of inputs ``decoded`` covers."""
        results: list[Moderation | DecodeError] = [*[DecodeError("not decoded")] * count]
        for index, error in decoded.errors.items():
            results[index] = error
        verdicts = self.classify_pixels(decoded.pixels)  # every sampled frame of every input in the same batches
        if not decoded.frame_counts:
            for index, verdict in zip(decoded.indices, verdicts, strict=True):
                results[index] = verdict
            return results
        by_input: dict[int, list[Moderation]] = {}
        frames = decoded.frames or (0,) * len(decoded.indices)
        for index, frame, verdict in zip(decoded.indices, frames, verdicts, strict=True):
            total = decoded.frame_counts.get(index, 1)
            by_input.setdefault(index, []).append(replace(verdict, frame=frame, frame_count=total))
        for index, sampled in by_input.items():
            results[index] = replace(sampled[0], frames=tuple(sampled)) if len(sampled) > 1 else sampled[0]
        return results

    def close(self) -> None:
        self.decoder.close()
