"""Class texts and their embeddings: labels x (templates x synonyms + descriptions), encoded once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.config import TaxonomyConfig


def class_texts(taxonomy: TaxonomyConfig) -> list[list[str]]:
    """Every text of every class: each template filled with each synonym, then the descriptions as written."""
    texts = []
    for label in taxonomy.labels:
        filled = [template.format(phrase) for phrase in label.phrases() for template in taxonomy.templates]
        texts.append(filled + list(label.descriptions))
    return texts


@dataclass(frozen=True)
class TextBank:
    """Unit-norm text embeddings per class, padded to the largest class.

    ``embeddings`` is ``[K, M, d]`` (padding rows are zero) and ``mask`` is ``[K, M]`` (True for real texts).
    """

    labels: tuple[str, ...]
    embeddings: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def build(cls, backbone: Backbone, taxonomy: TaxonomyConfig) -> TextBank:
        per_class = class_texts(taxonomy)
        flat = [text for texts in per_class for text in texts]
        encoded = backbone.encode_texts(flat)
        width = max(len(texts) for texts in per_class)
        embeddings = encoded.new_zeros((len(per_class), width, encoded.shape[-1]))
        mask = torch.zeros((len(per_class), width), dtype=torch.bool, device=encoded.device)
        start = 0
        for k, texts in enumerate(per_class):
            embeddings[k, : len(texts)] = encoded[start : start + len(texts)]
            mask[k, : len(texts)] = True
            start += len(texts)
        return cls(labels=taxonomy.label_names, embeddings=embeddings, mask=mask)

    def class_means(self) -> torch.Tensor:
        """``[K, d]``: the average of each class's text embeddings, renormalised (open_clip's zero-shot weights)."""
        summed = (self.embeddings * self.mask.unsqueeze(-1)).sum(dim=1)
        return torch.nn.functional.normalize(summed / self.mask.sum(dim=1, keepdim=True), dim=-1)

    def flat(self) -> torch.Tensor:
        """``[T, d]``: every real text embedding, class by class."""
        return self.embeddings[self.mask]
