"""open_clip checkpoints: outputs equal real open_clip's (golden/, recorded by make_open_clip_golden.py with
open_clip 3.3.0) on the same random weights, loaded from a directory or as ``hf-hub:ORG/NAME`` from the cache,
with safetensors preferred and pickles read without running code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from cola_moderation.operators.backbones.openclip import OpenClipBackbone
from cola_moderation.operators.backbones.registry import load_backbone, load_geometry
from cola_moderation.operators.config import ModelConfig, TaxonomyConfig
from cola_moderation.operators.decode import ImageDecoder
from cola_moderation.operators.defences.text_bank import TextBank
from cola_moderation.operators.defences.zeroshot import ZeroShotClassifier
from cola_moderation.operators.errors import ModelLoadError
from tests.operators.backbones.hub_cache import GOLDEN, HERE, put_in_hub_cache, write_golden_model

NAMES = sorted(GOLDEN["models"])


def golden_pixels(name: str) -> torch.Tensor:
    """The golden images decoded by the product decoder (PNG at the model's size: no resampling)."""
    entry = GOLDEN["models"][name]
    size = entry["config"]["model_cfg"]["vision_cfg"]["image_size"]
    with ImageDecoder(size=size) as decoder:
        decoded = decoder.decode([(HERE / "golden" / "images" / image).read_bytes() for image in entry["images"]])
    assert not decoded.errors
    return decoded.pixels


def _load(path: Path | str, **extra: object) -> OpenClipBackbone:
    backbone = load_backbone(ModelConfig.model_validate({"path": str(path), "device": "cpu", **extra}))
    assert isinstance(backbone, OpenClipBackbone)
    return backbone


@pytest.mark.parametrize("name", NAMES)
def test_embeddings_and_zero_shot_match_real_open_clip(name: str, tmp_path: Path) -> None:
    entry = GOLDEN["models"][name]
    backbone = _load(write_golden_model(name, tmp_path / name))
    config = entry["config"]
    assert backbone.family == "open_clip"
    if entry["logit_bias"] is None:
        assert backbone.logit_bias is None
    else:
        assert backbone.logit_bias == pytest.approx(entry["logit_bias"])
    assert backbone.geometry.size == config["model_cfg"]["vision_cfg"]["image_size"]
    assert list(backbone.geometry.mean) == config["preprocess_cfg"]["mean"]
    assert backbone.embed_dim == config["model_cfg"]["embed_dim"]
    assert backbone.logit_scale == pytest.approx(entry["logit_scale"], rel=1e-6)

    tokens = backbone.tokenizer(entry["texts"])["input_ids"]
    assert tokens == entry["tokens"]  # open_clip's tokenizer: same ids, truncated at the same place
    images = backbone.encode_images(golden_pixels(name))
    torch.testing.assert_close(images, torch.tensor(entry["image_embeddings"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(backbone.encode_texts(entry["texts"]), torch.tensor(entry["text_embeddings"]), rtol=0,
                               atol=1e-5)
    taxonomy = TaxonomyConfig(labels=GOLDEN["labels"], templates=GOLDEN["templates"])
    classifier = ZeroShotClassifier(TextBank.build(backbone, taxonomy), logit_scale=backbone.logit_scale,
                                    logit_bias=backbone.logit_bias)
    probs = classifier.scores(images).probs
    torch.testing.assert_close(probs, torch.tensor(entry["zero_shot_probs"]), rtol=0, atol=1e-5)
    assert probs.argmax(-1).tolist() == torch.tensor(entry["zero_shot_probs"]).argmax(-1).tolist()


def test_long_text_is_truncated_like_open_clip() -> None:
    entry = GOLDEN["models"]["tiny-gelu-custom-preprocess"]  # context_length 24
    assert max(len(t) for t in entry["tokens"]) <= 24


def test_hf_hub_spelling_reads_the_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_golden_model("tiny-quickgelu", tmp_path / "source")
    commit = put_in_hub_cache(tmp_path / "hub", "test-org/tiny-open-clip", source)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    pixels = golden_pixels("tiny-quickgelu")
    expected = _load(source).encode_images(pixels)
    for revision in (None, commit):
        backbone = _load("hf-hub:test-org/tiny-open-clip", revision=revision)
        torch.testing.assert_close(backbone.encode_images(pixels), expected, rtol=0, atol=0)
    assert load_geometry(ModelConfig(path="hf-hub:test-org/tiny-open-clip")).size == 32
    with pytest.raises(ModelLoadError, match="hf download test-org/tiny-open-clip"):
        _load("hf-hub:test-org/tiny-open-clip", revision="0" * 40)
    with pytest.raises(ModelLoadError, match=r"(?s)not in the Hugging Face cache.*hf download test-org/absent"):
        _load("hf-hub:test-org/absent")


def test_pickled_weights_load_through_weights_only(tmp_path: Path) -> None:
    pixels = golden_pixels("tiny-quickgelu")
    safe = _load(write_golden_model("tiny-quickgelu", tmp_path / "safe")).encode_images(pixels)
    pickled = _load(write_golden_model("tiny-quickgelu", tmp_path / "bin", pickle=True))
    assert (tmp_path / "bin" / "open_clip_pytorch_model.bin").is_file()
    torch.testing.assert_close(pickled.encode_images(pixels), safe, rtol=0, atol=0)


def test_safetensors_win_over_a_pickle_in_the_same_directory(tmp_path: Path) -> None:
    both = write_golden_model("tiny-quickgelu", tmp_path / "both")
    write_golden_model("tiny-quickgelu", tmp_path / "other", pickle=True, seed=99)
    (tmp_path / "other" / "open_clip_pytorch_model.bin").rename(both / "open_clip_pytorch_model.bin")
    pixels = golden_pixels("tiny-quickgelu")
    expected = torch.tensor(GOLDEN["models"]["tiny-quickgelu"]["image_embeddings"])
    torch.testing.assert_close(_load(both).encode_images(pixels), expected, rtol=0, atol=1e-5)


class WritesAFile:
    """Unpickling this calls ``exec`` with code that writes ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_a_crafted_pickle_runs_nothing_and_fails_in_one_line(tmp_path: Path) -> None:
    directory = write_golden_model("tiny-quickgelu", tmp_path / "evil")
    (directory / "open_clip_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"visual.proj": WritesAFile(marker)}, directory / "open_clip_pytorch_model.bin")
    with pytest.raises(ModelLoadError) as caught:
        _load(directory)
    message = str(caught.value)
    assert "refusing to load" in message and "not plain tensors" in message and "\n" not in message
    assert not marker.exists()
    # the payload is live: an unrestricted unpickler does run it (so the check above can fail)
    pickle.loads(pickle.dumps(WritesAFile(marker)))
    assert marker.read_text() == "ran"


@pytest.mark.parametrize(("key", "value", "named"), [
    ("text_cfg", {"hf_tokenizer_name": "bert-base-uncased"}, "text_cfg.hf_tokenizer_name"),
    ("vision_cfg", {"timm_model_name": "vit_base_patch16_siglip_224"}, "vision_cfg.timm_model_name"),
    ("vision_cfg", {"layers": [3, 4, 6, 3]}, "ResNet"),
    ("vision_cfg", {"attentional_pool": True}, "vision_cfg.attentional_pool"),
])
def test_non_standard_architectures_are_refused_by_name(tmp_path: Path, key: str, value: dict[str, object],
                                                        named: str) -> None:
    import json

    directory = write_golden_model("tiny-quickgelu", tmp_path / "odd")
    config = json.loads((directory / "open_clip_config.json").read_text())
    config["model_cfg"][key].update(value)
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=named.replace(".", r"\.")):
        _load(directory)


def test_weights_that_do_not_fit_the_config_fail_clearly(tmp_path: Path) -> None:
    import json

    directory = write_golden_model("tiny-quickgelu", tmp_path / "mismatch")
    config = json.loads((directory / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["layers"] = 3
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="do not match open_clip_config.json"):
        _load(directory)


def test_bf16_runs_and_stays_close(tmp_path: Path) -> None:
    directory = write_golden_model("tiny-quickgelu", tmp_path / "bf16")
    pixels = golden_pixels("tiny-quickgelu")
    low = _load(directory, dtype="bf16")
    assert low.dtype == torch.bfloat16 and low.encode_images(pixels).dtype == torch.float32
    torch.testing.assert_close(low.encode_images(pixels), _load(directory).encode_images(pixels), rtol=0, atol=0.05)
