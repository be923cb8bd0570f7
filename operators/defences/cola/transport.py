"""Batched entropic optimal transport with POT's ``ot.batch.solve_batch``, on torch tensors, on the data's device.

COLA solves one small problem per (image, class): N views x M texts. All B*K problems go to POT at once. The
returned distance is the transport cost of the entropic plan, <T, C> (what ``ot.sinkhorn2`` returns), not the
regularised objective. Not converging within ``max_iter`` is reported as a flag and an
:class:`OTConvergenceWarning`, never raised: a slightly unconverged plan still gives a usable distance.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from cola_moderation.operators.config import TransportConfig

SCALING_MIN_EPS = 0.03
"""Below this eps the scaling (non-log) iterations risk exp(-cost/eps) underflow in float32 (costs span [0, 2])."""


class OTConvergenceWarning(RuntimeWarning):
    """Sinkhorn stopped at ``max_iter`` with the marginal error above ``tol``."""


@dataclass(frozen=True)
class TransportResult:
    """Distances ``[P]`` (differentiable in the cost when asked), the plans ``[P, N, M]`` (detached), and whether the
    largest marginal error over the batch reached ``tol`` within ``iterations``."""

    distances: torch.Tensor
    plans: torch.Tensor
    converged: bool
    iterations: int
    marginal_error: float


def solve_entropic(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, config: TransportConfig | None = None,
                   *, grad: bool = False) -> TransportResult:
    """Solve ``P`` entropic OT problems min <T, C_p> - eps H(T) s.t. T 1 = a_p, T^T 1 = b_p.

    ``cost`` ``[P, N, M]``, ``a`` ``[P, N]``, ``b`` ``[P, M]`` (rows sum to 1; zero entries of ``b`` mark padding).
    With ``grad=True`` the distances carry gradients to ``cost`` (and through it to whatever produced it):
    ``gradient: envelope`` uses d<T*,C>/dC ~ T* (the exact gradient of the regularised value, no solver graph kept),
    ``gradient: autodiff`` back-propagates through every Sinkhorn iteration (exact, memory grows with iterations).
    """
    from ot.batch import solve_batch

    config = config or TransportConfig()
    method = config.method
    if method == "auto":
        method = "sinkhorn" if config.eps >= SCALING_MIN_EPS else "log_sinkhorn"
    # Shifting each problem's cost by a constant leaves its plan unchanged and keeps exp(-C/eps) away from underflow.
    shifted = cost - cost.detach().amin(dim=(1, 2), keepdim=True)
    autodiff = grad and config.gradient == "autodiff"
    # POT creates some iterates with default-device factories; pin the default to the data's device (CUDA-safe).
    with torch.device(cost.device), torch.set_grad_enabled(autodiff):
        result = solve_batch(shifted if autodiff else shifted.detach(), reg=config.eps, a=a.detach(), b=b.detach(),
                             max_iter=config.max_iter, tol=config.tol, method=method,
                             grad="autodiff" if autodiff else "detach")
    plans = result.plan
    with torch.no_grad():
        error = float((plans.sum(dim=2) - a).norm(dim=1).max()) if plans.numel() else 0.0
    iterations = int(result.log["n_iter"]) + 1
    converged = error <= config.tol
    if not converged:
        warnings.warn(f"entropic OT did not converge: marginal error {error:.3g} > tol {config.tol:g} after "
                      f"{iterations} iterations (eps={config.eps:g}); raise transport.max_iter or eps",
                      OTConvergenceWarning, stacklevel=2)
    if autodiff:
        distances = (plans * cost).sum(dim=(1, 2))
        plans = plans.detach()
    else:
        distances = (plans * (cost if grad else cost.detach())).sum(dim=(1, 2))
    return TransportResult(distances=distances, plans=plans, converged=converged, iterations=iterations,
                           marginal_error=error)
