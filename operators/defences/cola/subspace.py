"""The text subspace: the span of all class text embeddings, and the projection of image embeddings onto it.

COLA step 2-3: stack the K*M unit text embeddings as columns Z (d x KM), take the SVD Z = U S V^T and keep
U_C = U[:, :C]. The projection Pi(x) = U_C U_C^T x (or mu + U_C U_C^T (x - mu) when centred) removes the part of an
image embedding no class text can explain, which is where much of an adversarial perturbation lands.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cola_moderation.operators.config import ProjectionConfig
from cola_moderation.operators.errors import ConfigError


def choose_rank(singular_values: torch.Tensor, *, rank: int | None, energy: float) -> int:
    """C from a fixed ``rank`` (capped at the numerical rank) or the smallest C keeping ``energy`` of sum(S^2)."""
    tol = singular_values.max() * max(singular_values.shape) * torch.finfo(singular_values.dtype).eps
    numerical = max(int((singular_values > tol).sum()), 1)
    if rank is not None:
        return min(rank, numerical)
    power = singular_values[:numerical].double().square()
    share = power.cumsum(0) / power.sum()
    return min(int((share < energy - 1e-12).sum()) + 1, numerical)


@dataclass(frozen=True)
class TextSubspace:
    """An orthonormal basis ``basis`` ``[d, C]`` of the text subspace and its optional centre ``mean`` ``[d]``."""

    basis: torch.Tensor
    mean: torch.Tensor | None = None

    @classmethod
    def fit(cls, texts: torch.Tensor, config: ProjectionConfig | None = None) -> TextSubspace:
        """``texts`` ``[T, d]`` (every real text embedding, any order) -> the rank-C subspace chosen by ``config``."""
        if texts.ndim != 2 or texts.shape[0] == 0:
            raise ConfigError(f"projection: need a non-empty [T, d] text embedding matrix, got {tuple(texts.shape)}")
        config = config or ProjectionConfig()
        mean = texts.mean(dim=0) if config.center else None
        centred = texts - mean if mean is not None else texts
        u, s, _ = torch.linalg.svd(centred.double().T, full_matrices=False)
        rank = choose_rank(s, rank=config.rank, energy=config.energy)
        return cls(basis=u[:, :rank].to(texts.dtype).contiguous(), mean=mean)

    def including(self, vectors: torch.Tensor) -> TextSubspace:
        """This subspace widened to contain ``vectors`` ``[P, d]`` (e.g. few-shot image prototypes, which the
        energy rule would otherwise drop as one row among many texts): their components off the basis are appended,
        orthonormalised."""
        if vectors.numel() == 0:
            return self
        basis = self.basis
        centred = vectors.to(basis) - (self.mean.to(basis) if self.mean is not None else 0.0)
        off = centred - (centred @ basis) @ basis.T
        q, r = torch.linalg.qr(off.double().T)
        keep = r.diagonal().abs() > 1e-6
        return TextSubspace(basis=torch.cat([basis, q[:, keep].to(basis.dtype)], dim=1).contiguous(), mean=self.mean)

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d]`` -> ``[..., d]``: Pi(x). Idempotent; differentiable; vectors in the subspace are unchanged."""
        basis = self.basis.to(device=x.device, dtype=x.dtype)
        if self.mean is None:
            return (x @ basis) @ basis.T
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        return mean + ((x - mean) @ basis) @ basis.T

    def residual_energy(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d]`` -> ``[...]``: share of ||x||^2 outside the subspace, ||x - Pi(x)||^2 / ||x||^2, in [0, 1]."""
        residual = x - self.project(x)
        return residual.square().sum(-1) / x.square().sum(-1).clamp_min(1e-12)
