from __future__ import annotations

import itertools
import warnings

import numpy as np
import ot
import pytest
import torch

from cola_moderation.operators.config import TransportConfig
from cola_moderation.operators.defences.cola.transport import OTConvergenceWarning, solve_entropic


def _problems(count: int, n: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    cost = torch.rand((count, n, m), generator=generator, dtype=torch.float64) * 2
    a = torch.rand((count, n), generator=generator, dtype=torch.float64) + 0.1
    b = torch.rand((count, m), generator=generator, dtype=torch.float64) + 0.1
    return cost, a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)


@pytest.mark.parametrize("method", ["sinkhorn", "log_sinkhorn"])
def test_batched_values_match_pot_sinkhorn2_per_problem(method: str) -> None:
    cost, a, b = _problems(12, 5, 7, seed=1)
    config = TransportConfig(eps=0.1, max_iter=5000, tol=1e-10, method=method)
    result = solve_entropic(cost, a, b, config)
    expected = torch.tensor([
        float(ot.sinkhorn2(a[p].numpy(), b[p].numpy(), cost[p].numpy(), 0.1, numItermax=20000, stopThr=1e-12))
        for p in range(cost.shape[0])
    ], dtype=torch.float64)
    assert result.converged
    torch.testing.assert_close(result.distances, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("method", "eps", "tol"), [("sinkhorn", 0.1, 1e-6), ("log_sinkhorn", 0.02, 1e-6),
                                                     ("log_sinkhorn", 0.05, 1e-3), ("sinkhorn", 0.5, 1e-9)])
def test_the_same_iterations_as_pot_solve_batch(method: str, eps: float, tol: float) -> None:
    """Our Sinkhorn is POT's ``ot.batch.solve_batch`` (the one COLA used): the same plans, stopping at the same
    iteration, padded text columns included, in float32 as COLA runs it."""
    from ot.batch import solve_batch

    cost, a, b = (t.float() for t in _problems(20, 6, 9, seed=4))
    b[:5, -3:] = 0  # padding: fewer texts in some classes
    b = b / b.sum(1, keepdim=True)
    config = TransportConfig(eps=eps, max_iter=3000, tol=tol, method=method)
    ours = solve_entropic(cost, a, b, config)
    shifted = cost - cost.amin(dim=(1, 2), keepdim=True)
    theirs = solve_batch(shifted, reg=eps, a=a, b=b, max_iter=3000, tol=tol, method=method, grad="detach")
    assert ours.iterations == int(theirs.log["n_iter"]) + 1
    torch.testing.assert_close(ours.plans, theirs.plan, atol=1e-6, rtol=1e-5)
    assert float(ours.plans[:5, :, -3:].abs().max()) == 0.0


def test_values_approach_exact_ot_as_eps_shrinks() -> None:
    cost, a, b = _problems(6, 4, 6, seed=2)
    exact = torch.tensor([float(ot.emd2(a[p].numpy(), b[p].numpy(), cost[p].numpy())) for p in range(6)],
                         dtype=torch.float64)
    gaps = []
    for eps in (0.5, 0.1, 0.02, 0.005):
        config = TransportConfig(eps=eps, max_iter=20000, tol=1e-9)
        gaps.append(float((solve_entropic(cost, a, b, config).distances - exact).abs().max()))
    assert all(later < earlier for earlier, later in itertools.pairwise(gaps)), gaps
    assert gaps[-1] < 1e-2
    # the entropic plan's cost is never below the exact optimum
    final = solve_entropic(cost, a, b, TransportConfig(eps=0.005, max_iter=20000, tol=1e-9)).distances
    assert bool((final >= exact - 1e-7).all())


def test_zero_text_weights_mark_padding() -> None:
    cost, a, b = _problems(3, 4, 5, seed=3)
    padded_b = torch.cat([b, torch.zeros(3, 2, dtype=b.dtype)], dim=1)
    padded_cost = torch.cat([cost, torch.full((3, 4, 2), 7.0, dtype=cost.dtype)], dim=2)
    config = TransportConfig(eps=0.05, max_iter=3000, tol=1e-9)
    torch.testing.assert_close(solve_entropic(padded_cost, a, padded_b, config).distances,
                               solve_entropic(cost, a, b, config).distances, atol=1e-7, rtol=0)


def test_non_convergence_is_a_flag_and_warning_not_an_error() -> None:
    cost, a, b = _problems(4, 5, 5, seed=4)
    with pytest.warns(OTConvergenceWarning, match="did not converge"):
        result = solve_entropic(cost, a, b, TransportConfig(eps=0.01, max_iter=1, tol=1e-12))
    assert not result.converged
    assert result.marginal_error > 1e-12
    assert torch.isfinite(result.distances).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert solve_entropic(cost, a, b, TransportConfig(eps=0.1, max_iter=2000, tol=1e-6)).converged


@pytest.mark.parametrize("gradient", ["envelope", "autodiff"])
def test_gradients_reach_the_cost(gradient: str) -> None:
    cost, a, b = _problems(3, 3, 4, seed=5)
    cost = cost.clone().requires_grad_(True)
    config = TransportConfig(eps=0.1, max_iter=2000, tol=1e-9, gradient=gradient)
    result = solve_entropic(cost, a, b, config, grad=True)
    result.distances.sum().backward()
    assert cost.grad is not None
    # d<T*, C>/dC is close to the plan itself (envelope: exactly the plan)
    torch.testing.assert_close(cost.grad, result.plans, atol=0.05 if gradient == "autodiff" else 1e-12, rtol=0)
    if gradient == "autodiff":
        # autodiff is the exact derivative of the returned value: check one entry by finite differences
        step = 1e-6
        bumped = cost.detach().clone()
        bumped[0, 1, 2] += step
        numeric = (solve_entropic(bumped, a, b, config).distances[0] - result.distances[0].detach()) / step
        torch.testing.assert_close(cost.grad[0, 1, 2], numeric, atol=1e-4, rtol=0)


def test_no_grad_by_default() -> None:
    cost, a, b = _problems(2, 3, 3, seed=6)
    result = solve_entropic(cost.requires_grad_(True), a, b)
    assert not result.distances.requires_grad
    assert np.isfinite(result.distances.numpy()).all()
