from __future__ import annotations

import pytest
import torch

from cola_moderation.operators.backbones.base import Backbone
from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.config import ColaConfig, ProjectionConfig, TaxonomyConfig, TransportConfig, ViewsConfig
from cola_moderation.operators.defences.cola.scorer import ColaScorer, replaced_logit_entropy
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier

TAXONOMY = TaxonomyConfig(
    labels=["cat", "dog", {"name": "car", "descriptions": ["a red sports car on a road.", "a parked sedan."]}, "tree"],
    templates=("a photo of a {}.", "a drawing of a {}.", "a blurry photo of a {}."),
)
ALL_OFF = ColaConfig(views=ViewsConfig(enabled=False), projection=ProjectionConfig(enabled=False),
                     transport=TransportConfig(enabled=False))


@pytest.fixture(scope="module")
def bank(tiny_backbone: Backbone) -> TextBank:
    return TextBank.build(tiny_backbone, TAXONOMY)


def _pixels(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_everything_off_reproduces_plain_clip(tiny_backbone: Backbone, bank: TextBank) -> None:
    pixels = _pixels(16, tiny_backbone.geometry.size)
    features = tiny_backbone.encode_images(pixels)
    clip = ZeroShotClassifier(bank, logit_scale=tiny_backbone.logit_scale).scores(features)
    cola = ColaScorer(bank, ALL_OFF, logit_scale=tiny_backbone.logit_scale).score_pixels(tiny_backbone, pixels)
    assert torch.equal(cola.predicted, clip.predicted)
    torch.testing.assert_close(cola.scores.probs, clip.probs, atol=1e-5, rtol=0)


def test_full_cola_shapes_and_batch_independence(tiny_backbone: Backbone, bank: TextBank) -> None:
    scorer = ColaScorer(bank, ColaConfig(), logit_scale=tiny_backbone.logit_scale)
    pixels = _pixels(6, tiny_backbone.geometry.size, seed=1)
    scores = scorer.score_pixels(tiny_backbone, pixels)
    assert scores.distances.shape == (6, 4)
    assert scores.view_weights.shape == (6, 5)
    torch.testing.assert_close(scores.view_weights.sum(-1), torch.ones(6))
    torch.testing.assert_close(scores.scores.probs.sum(-1), torch.ones(6))
    assert scores.converged
    assert bool(((scores.residual_energy >= 0) & (scores.residual_energy <= 1)).all())
    single = scorer.score_pixels(tiny_backbone, pixels[3:4])
    torch.testing.assert_close(single.distances, scores.distances[3:4], atol=1e-5, rtol=0)


def test_reusing_the_original_embedding_gives_the_same_scores(tiny_backbone: Backbone, bank: TextBank) -> None:
    scorer = ColaScorer(bank, ColaConfig(), logit_scale=tiny_backbone.logit_scale)
    pixels = _pixels(4, tiny_backbone.geometry.size, seed=2)
    full = scorer.score_pixels(tiny_backbone, pixels)
    reused = scorer.score_pixels(tiny_backbone, pixels, known=tiny_backbone.encode_images(pixels).unsqueeze(1))
    torch.testing.assert_close(reused.distances, full.distances, atol=1e-5, rtol=0)
    probe = scorer.encode_view(tiny_backbone, pixels, 1)
    two = torch.stack([tiny_backbone.encode_images(pixels), probe], dim=1)
    torch.testing.assert_close(scorer.score_pixels(tiny_backbone, pixels, known=two).distances, full.distances,
                               atol=1e-5, rtol=0)
    every = tiny_backbone.encode_images(scorer.views(pixels).flatten(0, 1)).view(4, scorer.view_count, -1)
    expected_shift = (1 - (every[:, 1:] * every[:, :1]).sum(-1)).mean(-1)
    torch.testing.assert_close(full.view_shift, expected_shift, atol=1e-5, rtol=0)
    assert bool((full.view_shift > 0).all())


def test_each_stage_changes_the_distances(tiny_backbone: Backbone, bank: TextBank) -> None:
    pixels = _pixels(4, tiny_backbone.geometry.size, seed=3)
    base = ColaScorer(bank, ALL_OFF, logit_scale=tiny_backbone.logit_scale).score_pixels(tiny_backbone, pixels)
    for stage in ("views", "projection", "transport"):
        section = getattr(ALL_OFF, stage).model_copy(update={"enabled": True})
        config = ALL_OFF.model_copy(update={stage: section})
        if stage == "projection":
            config = config.model_copy(update={"projection": ProjectionConfig(rank=2)})
        scores = ColaScorer(bank, config, logit_scale=tiny_backbone.logit_scale).score_pixels(tiny_backbone, pixels)
        assert not torch.allclose(scores.distances, base.distances, atol=1e-6), stage


@pytest.mark.parametrize("gradient", ["envelope", "autodiff"])
def test_gradients_flow_from_distances_to_pixels(tiny_backbone: Backbone, bank: TextBank, gradient: str) -> None:
    config = ColaConfig(transport=TransportConfig(gradient=gradient))
    scorer = ColaScorer(bank, config, logit_scale=tiny_backbone.logit_scale)
    pixels = _pixels(2, tiny_backbone.geometry.size, seed=4).requires_grad_(True)
    scores = scorer.score_pixels(tiny_backbone, pixels, grad=True)
    assert scores.distances.requires_grad
    torch.nn.functional.cross_entropy(-scores.distances / scorer.temperature, torch.tensor([0, 1])).backward()
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0


def test_no_graph_without_grad(tiny_backbone: Backbone, bank: TextBank) -> None:
    scorer = ColaScorer(bank, ColaConfig(), logit_scale=tiny_backbone.logit_scale)
    scores = scorer.score_pixels(tiny_backbone, _pixels(2, tiny_backbone.geometry.size).requires_grad_(True))
    assert not scores.distances.requires_grad


def test_text_weights_ignore_padding(tiny_backbone: Backbone, bank: TextBank) -> None:
    scorer = ColaScorer(bank, ColaConfig(), logit_scale=tiny_backbone.logit_scale)
    assert bank.mask.sum(1).tolist() == [3, 3, 5, 3]
    features = tiny_backbone.encode_images(_pixels(3, tiny_backbone.geometry.size, seed=5)).unsqueeze(1)
    text_cos = torch.einsum("bnd,kmd->bknm", features, bank.embeddings)
    weights = scorer._text_weights(tiny_backbone.logit_scale * features @ bank.class_means().T, text_cos,
                                   torch.ones(3, 1), bank.mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4))
    assert float(weights[:, [0, 1, 3], 3:].abs().max()) == 0.0


def test_replaced_logit_entropy_matches_brute_force() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, generator=generator) * 20
    replacements = torch.randn(2, 5, 3, generator=generator) * 20
    expected = torch.empty(2, 5, 3, dtype=torch.float64)
    for b in range(2):
        for y in range(5):
            for m in range(3):
                row = logits[b].double().clone()
                row[y] = replacements[b, y, m]
                p = row.softmax(-1)
                expected[b, y, m] = -(p * p.log()).sum()
    # float64 leave-one-out sums lose ~1e-7 absolute when one class holds nearly all the mass
    torch.testing.assert_close(replaced_logit_entropy(logits, replacements), expected, atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cola_on_cuda_matches_cpu(tiny_model_dir, bank: TextBank, tiny_backbone: Backbone) -> None:  # type: ignore[no-untyped-def]
    from cola_moderation.operators.config import ModelConfig

    cuda = load_backbone(ModelConfig(path=str(tiny_model_dir), device="cuda"))
    cuda_bank = TextBank.build(cuda, TAXONOMY)
    pixels = _pixels(4, cuda.geometry.size, seed=6)
    cpu_scores = ColaScorer(bank, logit_scale=tiny_backbone.logit_scale).score_pixels(tiny_backbone, pixels)
    scorer = ColaScorer(cuda_bank, logit_scale=cuda.logit_scale)
    gpu_pixels = pixels.cuda().requires_grad_(True)
    gpu_scores = scorer.score_pixels(cuda, gpu_pixels, grad=True)
    assert gpu_scores.distances.device.type == "cuda"
    gpu_scores.distances.sum().backward()
    assert gpu_pixels.grad is not None
    torch.testing.assert_close(gpu_scores.distances.detach().cpu(), cpu_scores.distances, atol=1e-4, rtol=0)
