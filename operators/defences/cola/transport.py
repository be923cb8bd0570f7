"""Batched entropic optimal transport (Sinkhorn) on torch tensors, on the data's device.

COLA solves one small problem per (image, class): N views x M texts. All B*K problems are solved at once by the
same iterations as POT's ``ot.batch.solve_batch`` (scaling or log-domain updates, the marginal error checked every
10th iteration), written here in torch: importing POT costs a worker ~0.5 s of CPU on its first COLA batch (it
imports ``scipy``), and POT stays the test oracle (``tests/operators/defences/cola/test_transport.py``). The
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
    config = config or TransportConfig()
    method = config.method
    if method == "auto":
        method = "sinkhorn" if config.eps >= SCALING_MIN_EPS else "log_sinkhorn"
    # Shifting each problem's cost by a constant leaves its plan unchanged and keeps exp(-C/eps) away from underflow.
    shifted = cost - cost.detach().amin(dim=(1, 2), keepdim=True)
    autodiff = grad and config.gradient == "autodiff"
    solve = _log_sinkhorn if method == "log_sinkhorn" else _scaling_sinkhorn
    with torch.set_grad_enabled(autodiff):
        plans, last = solve((shifted if autodiff else shifted.detach()) / -config.eps, a.detach(), b.detach(),
                            max_iter=config.max_iter, tol=config.tol)
    with torch.no_grad():
        error = float((plans.sum(dim=2) - a).norm(dim=1).max()) if plans.numel() else 0.0
    iterations = last + 1
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


def _converged(plans: torch.Tensor, a: torch.Tensor, tol: float) -> bool:
    """Whether the largest row-marginal error of ``plans`` (detached) is below ``tol``."""
    return not plans.numel() or float((plans.sum(dim=2) - a).norm(dim=1).max()) < tol


def _scaled(kernel: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return kernel * f[:, :, None] * g[:, None, :]


def _log_plan(log_kernel: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (log_kernel + u[:, :, None] + v[:, None, :]).exp()


def _scaling_sinkhorn(log_kernel: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, max_iter: int,
                      tol: float) -> tuple[torch.Tensor, int]:
    """Sinkhorn's matrix scaling on ``K = exp(log_kernel)``; the plans ``[P, N, M]`` and the last iteration's index.
    The marginal error is checked at iterations 0, 10, 20, ... (one host sync per check)."""
    kernel = log_kernel.exp()
    f = torch.ones_like(a)
    g = torch.ones_like(b)
    last = 0
    for last in range(max_iter):
        f = a / (kernel * g[:, None, :]).sum(dim=2)
        g = b / (kernel * f[:, :, None]).sum(dim=1)
        if last % 10 == 0 and _converged(_scaled(kernel.detach(), f.detach(), g.detach()), a, tol):
            break
    return _scaled(kernel, f, g), last


def _log_sinkhorn(log_kernel: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, max_iter: int,
                  tol: float) -> tuple[torch.Tensor, int]:
    """The same iterations on log potentials (no underflow for small eps); zero entries of ``b`` give ``-inf``
    potentials, i.e. empty plan columns."""
    log_a, log_b = a.log(), b.log()
    u = torch.zeros_like(a)
    v = torch.zeros_like(b)
    last = 0
    for last in range(max_iter):
        u = log_a - torch.logsumexp(log_kernel + v[:, None, :], dim=2)
        v = log_b - torch.logsumexp(log_kernel + u[:, :, None], dim=1)
        if last % 10 == 0 and _converged(_log_plan(log_kernel.detach(), u.detach(), v.detach()), a, tol):
            break
    return _log_plan(log_kernel, u, v), last
