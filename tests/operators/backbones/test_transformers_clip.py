from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cola_moderation.operators.backbones.base import resolve_device, resolve_dtype
from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.backbones.sources import ModelSource
from cola_moderation.operators.backbones.transformers_clip import ClipBackbone
from cola_moderation.operators.config import ModelConfig, TaxonomyConfig
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
from cola_moderation.operators.errors import DeviceError, ModelLoadError


@pytest.fixture(scope="module")
def tiny_backbone(tiny_model_dir: Path) -> ClipBackbone:
    """The shared tiny checkpoint through ``transformers`` (the suite's default fixture gets the torch runtime)."""
    backbone = load_backbone(ModelConfig(path=str(tiny_model_dir), device="cpu", runtime="transformers"))
    assert isinstance(backbone, ClipBackbone)
    return backbone


def test_loads_saved_checkpoint_through_the_user_path(tiny_backbone: ClipBackbone) -> None:
    assert tiny_backbone.geometry.size == 32
    assert tiny_backbone.device == torch.device("cpu")
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert tiny_backbone.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)  # CLIP's initial temperature


def test_image_embeddings_are_unit_vectors(tiny_backbone: ClipBackbone) -> None:
    features = tiny_backbone.encode_images(torch.rand(3, 3, 32, 32))
    assert features.shape == (3, tiny_backbone.embed_dim)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(3))
    assert features.dtype == torch.float32


def test_encode_images_matches_hand_normalised_clip_forward(tiny_backbone: ClipBackbone) -> None:
    pixels = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(tiny_backbone.geometry.mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny_backbone.geometry.std).view(1, 3, 1, 1)
    with torch.no_grad():
        model = tiny_backbone.model
        pooled = model.vision_model(pixel_values=(pixels - mean) / std).pooler_output
        expected = torch.nn.functional.normalize(model.visual_projection(pooled), dim=-1)
    torch.testing.assert_close(tiny_backbone.encode_images(pixels), expected)


def test_gradients_reach_pixels_only_when_asked(tiny_backbone: ClipBackbone) -> None:
    pixels = torch.rand(1, 3, 32, 32, requires_grad=True)
    tiny_backbone.encode_images(pixels, grad=True).sum().backward()
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0
    assert tiny_backbone.encode_images(pixels).requires_grad is False


def test_text_embeddings_differ_per_text(tiny_backbone: ClipBackbone) -> None:
    features = tiny_backbone.encode_texts(["a photo of a cat.", "a photo of a dog.", "a photo of a cat."])
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(features[0], features[2])
    assert float((features[0] - features[1]).abs().max()) > 1e-4


def test_text_batching_does_not_change_embeddings(tiny_backbone: ClipBackbone) -> None:
    texts = ["a cat", "a much longer sentence about a dog sitting on a red mat", "x"]
    torch.testing.assert_close(tiny_backbone.encode_texts(texts, batch_size=1), tiny_backbone.encode_texts(texts))


def test_bf16_on_cpu(tiny_model_dir: Path) -> None:
    backbone = ClipBackbone.load(ModelConfig(path=str(tiny_model_dir), device="cpu", dtype="bf16"))
    assert backbone.dtype == torch.bfloat16
    assert backbone.encode_images(torch.rand(1, 3, 32, 32)).dtype == torch.float32


def test_missing_directory_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load model .*not a directory, a hub id"):
        load_backbone(ModelConfig(path=str(tmp_path / "nope")))


def test_pickle_weights_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Only safetensors are loaded: a directory holding only pytorch_model.bin does not load."""
    import shutil

    from safetensors.torch import load_file

    target = tmp_path / "bin-only"
    shutil.copytree(tiny_model_dir, target)
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_backbone(ModelConfig(path=str(target)))


def test_hub_id_offline_without_cache_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="(?s)openai/clip-vit-base-patch32.*HF_HUB_OFFLINE"):
        load_backbone(ModelConfig(path="openai/clip-vit-base-patch32"))


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(DeviceError, match="fp16 is not supported on CPU"):
        resolve_dtype("fp16", torch.device("cpu"))


def test_unknown_builtin_model() -> None:
    with pytest.raises(ModelLoadError, match="unknown builtin model"):
        ModelSource.resolve("builtin:nope")
    hub = ModelSource.resolve("openai/clip-vit-base-patch32")
    assert (hub.repo_id, hub.directory) == ("openai/clip-vit-base-patch32", None)
    assert ModelSource.resolve("hf-hub:chs20/fare2-clip", "abc").repo_id == "chs20/fare2-clip"
    assert ModelSource.resolve("hf-hub:chs20/fare2-clip", "abc").revision == "abc"


def test_probabilities_equal_a_hand_written_clip_forward(tiny_backbone: ClipBackbone) -> None:
    """Single template, no synonyms: our probabilities are CLIPModel's own logits_per_image softmax."""
    taxonomy = TaxonomyConfig(labels=("cat", "dog", "car", "tree"), templates=("a photo of a {}.",))
    classifier = ZeroShotClassifier(TextBank.build(tiny_backbone, taxonomy), logit_scale=tiny_backbone.logit_scale)
    pixels = torch.rand(5, 3, 32, 32)
    probs = classifier.scores(tiny_backbone.encode_images(pixels)).probs

    model, geometry = tiny_backbone.model, tiny_backbone.geometry
    tokens = tiny_backbone.tokenizer([f"a photo of a {label}." for label in ("cat", "dog", "car", "tree")],
                                     padding=True, return_tensors="pt")
    mean, std = torch.tensor(geometry.mean).view(1, 3, 1, 1), torch.tensor(geometry.std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=(pixels - mean) / std)
    torch.testing.assert_close(probs, out.logits_per_image.softmax(dim=-1), atol=1e-5, rtol=0)
