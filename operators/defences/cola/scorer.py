"""COLA scoring (Cross-modality alignment, NeurIPS 2025): optimal transport between image views and class texts.

For each image: N views are encoded and (optionally) projected onto the text subspace; view weights
a = softmax(-H_n / view_tau) favour views whose plain-CLIP class distribution has low entropy H_n; for each class y,
text weights b_y = softmax(-H_ym / text_tau) favour texts m that make the class distribution confident; the cost is
C_y(n, m) = 1 - cos(Pi(x_n), z_y^m) and the class distance d_y is the entropic OT cost between (a, b_y). Prediction
is argmin_y d_y, confidence softmax(-d / temperature).

Ablation switches (config): ``views.enabled`` (N = 1), ``projection.enabled`` (no Pi), ``transport.enabled`` (d_y =
sum_n a_n (1 - cos(x_n, zbar_y)) with zbar_y plain CLIP's class-mean text embedding). With all three off and the
default temperature, the probabilities are exactly plain CLIP's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.config import ColaConfig
from cola_moderation.operators.defences.cola.subspace import TextSubspace
from cola_moderation.operators.defences.cola.transport import solve_entropic
from cola_moderation.operators.defences.cola.views import ViewParams, make_views, sample_view_params
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import Scores


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = logits.log_softmax(dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def replaced_logit_entropy(logits: torch.Tensor, replacements: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(``logits``) with class y's logit replaced by ``replacements[..., y, m]``, for every (y, m).

    ``logits`` ``[B, K]``, ``replacements`` ``[B, K, M]`` -> ``[B, K, M]``, in O(B K M) (closed form, float64).
    """
    logits, replacements = logits.double(), replacements.double()
    shift = torch.maximum(logits.amax(dim=-1), replacements.flatten(1).amax(dim=-1))[:, None]
    z = logits - shift  # [B, K]
    e = z.exp()
    total, weighted = e.sum(-1, keepdim=True), (e * z).sum(-1, keepdim=True)
    rest = (total - e)[..., None]  # [B, K, 1]: sum over the other classes
    rest_weighted = (weighted - e * z)[..., None]
    zr = replacements - shift[..., None]
    er = zr.exp()
    norm = rest + er
    return norm.log() - (rest_weighted + er * zr) / norm


def view_shift_of(features: torch.Tensor) -> torch.Tensor:
    """``[B, N, d]`` unit embeddings -> ``[B]``: mean over n >= 1 of 1 - cos(x_0, x_n) (0 when N = 1).

    Adversarial perturbations are tuned to the original pixel grid; resampled views undo part of them, so the
    embedding moves much more between views of an attacked image than of a clean one.
    """
    if features.shape[1] < 2:
        return features.new_zeros(features.shape[0])
    return (1.0 - (features[:, 1:] * features[:, :1]).sum(-1)).mean(-1)


@dataclass(frozen=True)
class ColaScores:
    """COLA's verdict on a batch: ``distances`` ``[B, K]`` (OT cost per class, lower = better), ``scores`` (confidence
    softmax(-d / temperature) over the labels), ``view_weights`` ``[B, N]``, ``residual_energy`` ``[B]`` (share of the
    original view's embedding outside the text subspace), ``view_shift`` ``[B]`` (mean 1 - cos between the original
    view's embedding and each augmented view's; 0 with one view) and whether every OT problem converged."""

    distances: torch.Tensor
    scores: Scores
    view_weights: torch.Tensor
    residual_energy: torch.Tensor
    view_shift: torch.Tensor
    converged: bool

    @property
    def predicted(self) -> torch.Tensor:
        return self.distances.argmin(dim=-1)


class ColaScorer:
    """COLA over one :class:`TextBank`. Build once per model (fits the subspace, draws the view parameters).

    Works on whatever device the bank and pixels are on; every step is differentiable when ``grad=True``.
    """

    def __init__(self, bank: TextBank, config: ColaConfig | None = None, *, logit_scale: float) -> None:
        config = config or ColaConfig()
        self.bank = bank
        self.config = config
        self.logit_scale = logit_scale
        self.temperature = config.temperature if config.temperature is not None else 1.0 / logit_scale
        self.class_means = bank.class_means()  # [K, d]
        self.subspace = TextSubspace.fit(bank.flat(), config.projection)
        if bank.prototypes is not None:  # few-shot labels: the projection keeps their image prototypes
            self.subspace = self.subspace.including(bank.prototypes)
        self.view_params = sample_view_params(config.views)
        self._text_valid = bank.mask  # [K, M]

    @property
    def view_count(self) -> int:
        return self.view_params.count

    def views(self, pixels: torch.Tensor, params: ViewParams | None = None) -> torch.Tensor:
        """``[B, 3, S, S]`` -> ``[B, N, 3, S, S]``: the configured seeded views (or ``params``, e.g. fresh for EOT)."""
        return make_views(pixels, params or self.view_params)

    def score_pixels(self, backbone: Backbone, pixels: torch.Tensor, *, grad: bool = False,
                     params: ViewParams | None = None, known: torch.Tensor | None = None) -> ColaScores:
        """Encode the views of ``[B, 3, S, S]`` pixels in [0, 1] and score them.

        ``known`` ``[B, k, d]``: already-computed embeddings of views 0..k-1 (e.g. the original image's, from plain
        CLIP), which are not encoded again. With ``grad=True`` gradients reach ``pixels`` through views, encoder,
        projection and OT.
        """
        views = self.views(pixels, params)
        batch, count = views.shape[:2]
        parts = [] if known is None else [known[:, :count].to(pixels.device)]
        first = 0 if known is None else min(known.shape[1], count)
        if count > first:
            flat = views[:, first:].reshape(batch * (count - first), *views.shape[2:])
            parts.append(backbone.encode_images(flat, grad=grad).view(batch, count - first, -1))
        features = torch.cat(parts, dim=1)
        return self.score_embeddings(features, grad=grad)

    def encode_view(self, backbone: Backbone, pixels: torch.Tensor, index: int) -> torch.Tensor:
        """``[B, d]``: the embedding of view ``index`` alone (the detector's probe uses view 1)."""
        return backbone.encode_images(self.views(pixels)[:, index])

    def score_embeddings(self, features: torch.Tensor, *, grad: bool = False) -> ColaScores:
        """``[B, N, d]`` unit-norm view embeddings (view 0 = the original image) -> :class:`ColaScores`."""
        config = self.config
        means = self.class_means.to(features.device)
        texts = self.bank.embeddings.to(features.device)  # [K, M, d]
        valid = self._text_valid.to(features.device)
        residual = self.subspace.residual_energy(features[:, 0]).detach()
        view_shift = view_shift_of(features.detach())
        x = self.subspace.project(features) if config.projection.enabled else features
        x = F.normalize(x, dim=-1)
        view_logits = self.logit_scale * x @ means.T  # [B, N, K]
        if config.view_weighting == "entropy":
            view_weights = (-_entropy(view_logits) / config.view_tau).softmax(dim=-1)
        else:
            view_weights = torch.full(x.shape[:2], 1.0 / x.shape[1], device=x.device, dtype=x.dtype)
        converged = True
        if config.transport.enabled:
            text_cos = torch.einsum("bnd,kmd->bknm", x, texts)  # [B, K, N, M]
            text_weights = self._text_weights(view_logits, text_cos, view_weights, valid)  # [B, K, M]
            batch, classes, count, width = text_cos.shape
            result = solve_entropic(
                (1.0 - text_cos).reshape(batch * classes, count, width),
                view_weights.unsqueeze(1).expand(-1, classes, -1).reshape(batch * classes, count),
                text_weights.reshape(batch * classes, width),
                config.transport, grad=grad)
            distances = result.distances.view(batch, classes)
            converged = result.converged
        else:
            distances = torch.einsum("bn,bnk->bk", view_weights, 1.0 - view_logits / self.logit_scale)
        probs = (-distances / self.temperature).softmax(dim=-1)
        if not grad:
            distances, probs, view_weights = distances.detach(), probs.detach(), view_weights.detach()
        return ColaScores(distances=distances, scores=Scores(labels=self.bank.labels, probs=probs),
                          view_weights=view_weights, residual_energy=residual, view_shift=view_shift,
                          converged=converged)

    def _text_weights(self, view_logits: torch.Tensor, text_cos: torch.Tensor, view_weights: torch.Tensor,
                      valid: torch.Tensor) -> torch.Tensor:
        """``[B, K, M]`` text weights per (image, class), zero on padding, rows summing to 1."""
        if self.config.text_weighting == "uniform":
            weights = valid.to(text_cos.dtype).expand(text_cos.shape[0], -1, -1)
            return weights / weights.sum(-1, keepdim=True)
        logits = torch.einsum("bn,bnk->bk", view_weights, view_logits)
        replaced = self.logit_scale * torch.einsum("bn,bknm->bkm", view_weights, text_cos)
        entropy = replaced_logit_entropy(logits, replaced).to(text_cos.dtype)
        scores = (-entropy / self.config.text_tau).masked_fill(~valid, float("-inf"))
        return scores.softmax(dim=-1)
