"""Class texts and their embeddings: labels x (templates x synonyms + descriptions), encoded once; labels with
example images also get their image prototype as a row (:mod:`cola_moderation.operators.defences.fewshot`)."""

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
    weights: torch.Tensor | None = None
    """``[K, M]`` each row's share of its class vector (rows of a class sum to 1); ``None``: equal shares."""
    prototypes: torch.Tensor | None = None
    """``[P, d]`` the few-shot labels' image prototypes (also rows of ``embeddings``); ``None`` without any."""

    @classmethod
    def build(cls, backbone: Backbone, taxonomy: TaxonomyConfig) -> TextBank:
        from cola_moderation.operators.defences.fewshot import example_images, prototype

        per_class = class_texts(taxonomy)
        flat = [text for texts in per_class for text in texts]
        encoded = backbone.encode_texts(flat)
        rows: list[torch.Tensor] = []
        shares: list[list[float]] = []
        prototypes: list[torch.Tensor] = []
        start = 0
        for label, texts in zip(taxonomy.labels, per_class, strict=True):
            own = encoded[start : start + len(texts)]
            start += len(texts)
            weight = label.examples_weight if label.examples else 0.0
            if not label.examples or weight == 0.0:
                rows.append(own)
                shares.append([1.0 / len(texts)] * len(texts))
                continue
            proto = prototype(backbone, example_images(label), name=label.name).to(own)
            prototypes.append(proto)
            kept = own if weight < 1.0 else own[:0]
            rows.append(torch.cat([kept, proto.unsqueeze(0)]))
            shares.append([(1.0 - weight) / len(texts)] * len(kept) + [weight])
        width = max(len(r) for r in rows)
        embeddings = encoded.new_zeros((len(rows), width, encoded.shape[-1]))
        mask = torch.zeros((len(rows), width), dtype=torch.bool, device=encoded.device)
        weights = encoded.new_zeros((len(rows), width))
        for k, (row, share) in enumerate(zip(rows, shares, strict=True)):
            embeddings[k, : len(row)] = row
            mask[k, : len(row)] = True
            weights[k, : len(row)] = torch.tensor(share, dtype=weights.dtype)
        fewshot = bool(prototypes)
        return cls(labels=taxonomy.label_names, embeddings=embeddings, mask=mask, weights=weights if fewshot else None,
                   prototypes=torch.stack(prototypes) if fewshot else None)

    def class_means(self) -> torch.Tensor:
        """``[K, d]``: the average of each class's text embeddings, renormalised (open_clip's zero-shot weights);
        with few-shot labels, the weighted average of :attr:`weights`."""
        if self.weights is not None:
            summed = (self.embeddings * self.weights.unsqueeze(-1)).sum(dim=1)
            return torch.nn.functional.normalize(summed, dim=-1)
        summed = (self.embeddings * self.mask.unsqueeze(-1)).sum(dim=1)
        return torch.nn.functional.normalize(summed / self.mask.sum(dim=1, keepdim=True), dim=-1)

    def flat(self) -> torch.Tensor:
        """``[T, d]``: every real text embedding, class by class."""
        return self.embeddings[self.mask]
