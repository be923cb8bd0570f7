"""Plain CLIP zero-shot classification: one matmul against per-class averaged text embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cola_moderation.operators.defences.text_bank import TextBank


@dataclass(frozen=True)
class Scores:
    """Class probabilities for a batch, with the labels they refer to."""

    labels: tuple[str, ...]
    probs: torch.Tensor
    """``[B, K]``: a softmax over the classes (rows sum to 1), or independent per-class sigmoids for backbones
    trained with a sigmoid loss (SigLIP: ``logit_bias`` set)."""

    def top_k(self, k: int) -> list[list[tuple[str, float]]]:
        k = min(k, len(self.labels))
        values, indices = self.probs.detach().float().cpu().topk(k, dim=-1)
        return [
            [(self.labels[i], float(v)) for v, i in zip(row_v.tolist(), row_i.tolist(), strict=True)]
            for row_v, row_i in zip(values, indices, strict=True)
        ]

    @property
    def predicted(self) -> torch.Tensor:
        return self.probs.argmax(dim=-1)

    def margin(self) -> torch.Tensor:
        """``[B]``: top-1 minus top-2 probability."""
        top2 = self.probs.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]


class ZeroShotClassifier:
    """Scores image embeddings against the class-mean text embeddings, scaled by the model's logit scale.

    With ``logit_bias`` (SigLIP) each class's score is ``sigmoid(logit_scale * cos + logit_bias)``, as the model was
    trained; without it a softmax over the classes (CLIP). The top-1 class is the same either way."""

    def __init__(self, bank: TextBank, *, logit_scale: float, logit_bias: float | None = None) -> None:
        self.bank = bank
        self.labels = bank.labels
        self.weights = bank.class_means()  # [K, d]
        self.logit_scale = logit_scale
        self.logit_bias = logit_bias

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` unit-norm image embeddings -> ``[B, K]`` logits (``logit_bias`` included when set)."""
        logits = self.logit_scale * image_features @ self.weights.T
        return logits if self.logit_bias is None else logits + self.logit_bias

    def scores(self, image_features: torch.Tensor) -> Scores:
        return self.scores_of_logits(self.logits(image_features))

    def scores_of_logits(self, logits: torch.Tensor) -> Scores:
        """``[B, K]`` logits from :meth:`logits` -> class probabilities (softmax, or sigmoid with a logit bias)."""
        probs = logits.softmax(dim=-1) if self.logit_bias is None else logits.sigmoid()
        return Scores(labels=self.labels, probs=probs)
