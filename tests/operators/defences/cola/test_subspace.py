from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cola_moderation.operators.config import ProjectionConfig
from cola_moderation.operators.defences.cola.subspace import TextSubspace, choose_rank
from cola_moderation.operators.errors import ConfigError


def _texts(count: int = 40, dim: int = 16, latent: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(latent, dim, generator=generator)
    return F.normalize(torch.randn(count, latent, generator=generator) @ mixing, dim=-1)


@pytest.mark.parametrize("center", [False, True])
def test_projection_is_idempotent(center: bool) -> None:
    subspace = TextSubspace.fit(_texts(), ProjectionConfig(rank=4, center=center))
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(1))
    once = subspace.project(x)
    torch.testing.assert_close(subspace.project(once), once, atol=1e-5, rtol=0)
    assert not torch.allclose(once, x, atol=1e-3)


def test_text_embeddings_in_the_subspace_are_unchanged() -> None:
    texts = _texts()
    subspace = TextSubspace.fit(texts, ProjectionConfig(energy=1.0))
    assert subspace.rank == 6  # the texts' numerical rank
    torch.testing.assert_close(subspace.project(texts), texts, atol=1e-5, rtol=0)
    torch.testing.assert_close(subspace.residual_energy(texts), torch.zeros(len(texts)), atol=1e-5, rtol=0)
    # with a truncated rank, vectors spanned by the kept basis stay put
    truncated = TextSubspace.fit(texts, ProjectionConfig(rank=3))
    inside = torch.randn(5, 3) @ truncated.basis.T
    torch.testing.assert_close(truncated.project(inside), inside, atol=1e-5, rtol=0)


def test_rank_rule() -> None:
    values = torch.tensor([10.0, 5.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    assert choose_rank(values, rank=2, energy=0.5) == 2
    assert choose_rank(values, rank=100, energy=0.5) == 4  # capped at the numerical rank
    assert choose_rank(values, rank=None, energy=0.79) == 1  # 100 / 126.01
    assert choose_rank(values, rank=None, energy=0.99) == 2  # 125 / 126.01
    assert choose_rank(values, rank=None, energy=1.0) == 4


def test_residual_energy_is_the_off_subspace_share() -> None:
    subspace = TextSubspace.fit(torch.eye(4)[:2], ProjectionConfig(energy=1.0))
    x = torch.tensor([[3.0, 0.0, 4.0, 0.0]])
    torch.testing.assert_close(subspace.residual_energy(x), torch.tensor([16 / 25]))


def test_gradients_flow_through_projection() -> None:
    subspace = TextSubspace.fit(_texts(), ProjectionConfig(rank=3))
    x = torch.randn(2, 16, requires_grad=True)
    subspace.project(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_input_names_the_section() -> None:
    with pytest.raises(ConfigError, match="projection"):
        TextSubspace.fit(torch.zeros(0, 4))


def test_including_keeps_extra_directions_exactly() -> None:
    from cola_moderation.operators.defences.cola.subspace import TextSubspace

    torch.manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(12, 32), dim=-1)
    subspace = TextSubspace.fit(texts)
    prototype = torch.nn.functional.normalize(torch.randn(1, 32), dim=-1)
    widened = subspace.including(prototype)
    assert widened.rank == subspace.rank + 1
    torch.testing.assert_close(widened.project(prototype), prototype, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(widened.project(texts), subspace.project(texts), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(widened.basis.T @ widened.basis, torch.eye(widened.rank), atol=1e-5, rtol=1e-5)
    assert widened.including(prototype).rank == widened.rank  # already inside: nothing added
