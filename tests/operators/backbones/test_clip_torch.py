"""The plain-torch CLIP runtime against ``transformers``' ``CLIPModel`` on the same checkpoint files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cola_moderation.operators.backbones.checkpoint import TINY, new_clip_model, save_checkpoint
from cola_moderation.operators.backbones.clip_torch import TorchClipBackbone, read_config
from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.backbones.transformers_clip import ClipBackbone
from cola_moderation.operators.config import ModelConfig
from cola_moderation.operators.errors import ModelLoadError

REPO = Path(__file__).resolve().parents[3]
TEXTS = ["a photo of a t-shirt.", "A PHOTO OF A   Sneaker!!", "x", "", "a " * 60,
         "naïve café 東京 🙂 <|endoftext|> tail", "trouser\tbag\ncoat"]


def both(path: str | Path, **model: object) -> tuple[TorchClipBackbone, ClipBackbone]:
    ours = load_backbone(ModelConfig(path=str(path), device="cpu", runtime="torch", **model))  # type: ignore[arg-type]
    theirs = load_backbone(ModelConfig(path=str(path), device="cpu", runtime="transformers",  # type: ignore[arg-type]
                                       **model))
    assert isinstance(ours, TorchClipBackbone) and isinstance(theirs, ClipBackbone)
    return ours, theirs


def assert_same_numbers(ours: TorchClipBackbone, theirs: ClipBackbone, *, atol: float = 1e-5) -> None:
    size = ours.geometry.size
    pixels = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours.encode_images(pixels), theirs.encode_images(pixels), atol=atol, rtol=0)
    torch.testing.assert_close(ours.encode_texts(TEXTS), theirs.encode_texts(TEXTS), atol=atol, rtol=0)
    assert ours.logit_scale == pytest.approx(theirs.logit_scale)
    assert (ours.embed_dim, ours.geometry) == (theirs.embed_dim, theirs.geometry)


def test_reference_model_gives_transformers_numbers_and_tokens() -> None:
    ours, theirs = both("builtin:reference")
    assert_same_numbers(ours, theirs)
    ids, mask = ours.tokenizer(TEXTS)
    expected = theirs.tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    assert ids.shape[1] == 32  # the long text is truncated to the context length, its end-of-text token kept
    assert int(ids[4, -1]) == ours.tokenizer.pad_id


def test_auto_picks_torch_for_a_standard_checkpoint(tiny_model_dir: Path) -> None:
    backbone = load_backbone(ModelConfig(path=str(tiny_model_dir), device="cpu"))
    assert isinstance(backbone, TorchClipBackbone)


def test_other_activations_and_the_legacy_end_of_text_pooling(tmp_path: Path) -> None:
    """gelu variants in either tower, and a config with ``eos_token_id: 2`` (written before transformers#24773),
    which takes the pool-at-the-highest-id branch. With CLIP's vocabulary the highest id is the end-of-text token,
    so that branch pools at the same position as the other: this checks the branch runs and agrees, not that the
    two branches differ (they only do for tokens added beyond the vocabulary)."""
    model = new_clip_model(TINY, seed=3)
    model.config.text_config.hidden_act = "gelu"
    model.config.text_config.eos_token_id = 2
    model.text_model.eos_token_id = 2
    model.config.vision_config.hidden_act = "gelu_pytorch_tanh"
    from transformers import CLIPModel

    rebuilt = CLIPModel(model.config)  # the activations are chosen when the modules are built
    rebuilt.load_state_dict(model.state_dict())
    directory = save_checkpoint(rebuilt, tmp_path / "variant", image_size=TINY.image_size)
    saved = json.loads((directory / "config.json").read_text())
    assert saved["text_config"]["eos_token_id"] == 2 and saved["vision_config"]["hidden_act"] == "gelu_pytorch_tanh"
    assert_same_numbers(*both(directory))


def test_gradients_to_pixels_match(tiny_model_dir: Path) -> None:
    """Attacks differentiate the image tower: the same gradient in both runtimes."""
    ours, theirs = both(tiny_model_dir)
    target = torch.nn.functional.normalize(torch.randn(3, ours.embed_dim), dim=-1)
    grads = []
    for backbone in (ours, theirs):
        pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        (backbone.encode_images(pixels, grad=True) * target).sum().backward()
        grads.append(pixels.grad)
    assert grads[0] is not None and float(grads[0].abs().sum()) > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_bf16_weights_agree_with_transformers_bf16(tiny_model_dir: Path) -> None:
    ours, theirs = both(tiny_model_dir, dtype="bf16")
    assert ours.image_tower.encoder.vision_model.pre_layrnorm.weight.dtype == torch.bfloat16
    assert_same_numbers(ours, theirs, atol=2e-2)


def test_saved_image_tower_loads_back_in_both_runtimes(tiny_model_dir: Path, tmp_path: Path) -> None:
    ours, _ = both(tiny_model_dir)
    tower = ours.trainable_image_tower()
    with torch.no_grad():
        tower.encoder.visual_projection.weight.mul_(-1.5)
    ours.save_with_image_tower(tower, tmp_path / "tuned")
    assert sorted(p.name for p in (tmp_path / "tuned").iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())
    pixels = torch.rand(2, 3, 32, 32)
    expected = torch.nn.functional.normalize(tower(pixels), dim=-1).detach()
    for backbone in both(tmp_path / "tuned"):
        # the base checkpoint stores fp32 here, so the saved tower is the trained one to float precision
        torch.testing.assert_close(backbone.encode_images(pixels), expected, atol=1e-3, rtol=0)
        torch.testing.assert_close(backbone.encode_texts(TEXTS), ours.encode_texts(TEXTS), atol=1e-3, rtol=0)


def copy_checkpoint(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_without_tokenizer_json_auto_falls_back_and_torch_says_why(tiny_model_dir: Path, tmp_path: Path) -> None:
    directory = copy_checkpoint(tiny_model_dir, tmp_path / "no-fast")
    (directory / "tokenizer.json").unlink()
    assert read_config(json.loads((directory / "config.json").read_text()), None) == "no tokenizer.json"
    assert isinstance(load_backbone(ModelConfig(path=str(directory), device="cpu")), ClipBackbone)
    with pytest.raises(ModelLoadError, match="model.runtime=torch cannot run .*no tokenizer.json"):
        load_backbone(ModelConfig(path=str(directory), device="cpu", runtime="torch"))


def test_an_unknown_activation_is_not_guessed(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "relu6"
    assert read_config(config, tiny_model_dir / "tokenizer.json") == "vision_config.hidden_act='relu6'"


def test_weights_that_do_not_match_the_config_fail_in_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    directory = copy_checkpoint(tiny_model_dir, tmp_path / "wrong")
    config = json.loads((directory / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 3
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"weights do not match config.json: missing \['vision_model.encoder"):
        load_backbone(ModelConfig(path=str(directory), device="cpu", runtime="torch"))


def test_a_worker_on_the_reference_config_imports_neither_transformers_nor_pot_nor_dynamo() -> None:
    """The default config's worker, through COLA's optimal transport on every image (``method: cola``): ~2.8 s of
    imports (transformers ~1.1 s, POT + scipy ~0.5 s, ``torch._dynamo`` ~1.2 s, which ``nn.Embedding``'s random
    initialisation on the meta device pulled in) a batch worker no longer pays before its first batch."""
    code = ("import sys, io; from PIL import Image; from cola_moderation.pipeline.runtime.config import load_config; "
            "from cola_moderation.pipeline.runtime.worker import ModerationWorker; "
            "c = load_config('configs/reference.yaml'); c = c.model_copy(update={'method': 'cola'}); "
            "m = ModerationWorker(c).start(); buf = io.BytesIO(); "
            "Image.new('RGB', (28, 28), (200, 30, 30)).save(buf, 'PNG'); "
            "r = m.moderate([buf.getvalue()] * 3); "
            "print(type(m.backbone).__name__, len(r), 'transformers' in sys.modules, 'ot' in sys.modules, "
            "'torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-5:] == ["TorchClipBackbone", "3", "False", "False", "False"]


@pytest.mark.parametrize("change", [{"text_config": ["not", "a", "dict"]}, {"vision_config": {"hidden_size": "big"}},
                                    {"vision_config": {"num_attention_heads": 0}}])
def test_a_malformed_config_is_one_line(tiny_model_dir: Path, tmp_path: Path, change: dict[str, object]) -> None:
    directory = copy_checkpoint(tiny_model_dir, tmp_path / "bad")
    config = json.loads((directory / "config.json").read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="not a usable CLIP config"):
        load_backbone(ModelConfig(path=str(directory), device="cpu"))
