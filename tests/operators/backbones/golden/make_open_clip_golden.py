"""Record real open_clip's outputs on random-weight checkpoints, for the parity tests of the open_clip family.

Run it in an environment that has open_clip (it needs torchvision, so not beside this project's CPU torch pin):

    python3.11 -m venv /tmp/venv-openclip
    /tmp/venv-openclip/bin/pip install torch==2.14.1 torchvision==0.29.1 open-clip-torch safetensors
    /tmp/venv-openclip/bin/python tests/operators/backbones/golden/make_open_clip_golden.py

For each architecture below it builds the weights with
:func:`cola_moderation.operators.backbones.open_clip_format.random_state_dict` (seeded per tensor name, so the tests
rebuild the same numbers without open_clip), writes them in open_clip's own layout, loads that directory with
``open_clip.create_model_and_transforms("local-dir:...")`` (open_clip's config parsing, weight loading, preprocessing
and tokenizer) and records the embeddings and zero-shot probabilities of a few images and class names. Writes
``open_clip_golden.json`` and ``images/*.png`` beside this script.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))  # the checkout: cola_moderation/ links the source folders

from cola_moderation.operators.backbones import open_clip_format as fmt  # noqa: E402 - after the path is set

LABELS = ("cat", "dog", "red car", "tree")
TEMPLATES = ("a photo of a {}.", "a blurry drawing of the {}.")
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
MODELS = {
    "tiny-quickgelu": {"embed_dim": 32, "quick_gelu": True,
                       "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                       "text_cfg": TINY_TEXT},
    "tiny-gelu-custom-preprocess": {"embed_dim": 32,
                                    "vision_cfg": {"image_size": 48, "layers": 3, "width": 96, "patch_size": 16,
                                                   "head_width": 48, "mlp_ratio": 2.0},
                                    "text_cfg": {**TINY_TEXT, "context_length": 24, "mlp_ratio": 3.0}},
    "tiny-custom-text": {"embed_dim": 32, "quick_gelu": True, "custom_text": True,
                         "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                         "text_cfg": TINY_TEXT},
    "tiny-logit-bias": {"embed_dim": 32, "quick_gelu": True, "init_logit_bias": -2.0,
                        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                        "text_cfg": TINY_TEXT},
    # open_clip's own ViT-B-32.json (GELU), as shipped in open_clip/model_configs
    "vit-b-32": {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
}
PREPROCESS = {"tiny-gelu-custom-preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
SEED = 7


def pattern(size: int, index: int) -> np.ndarray:
    """A smooth, image-like ``[size, size, 3]`` uint8 pattern (small as PNG), different per ``index``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    channels = [np.sin((index + 1) * 3.1 * x + c) * np.cos((index + 2) * 2.3 * y - c) for c in (0.0, 1.3, 2.6)]
    return np.clip(np.stack(channels, axis=-1) * 110 + 128, 0, 255).astype(np.uint8)


def main() -> None:
    (HERE / "images").mkdir(exist_ok=True)
    golden: dict[str, object] = {"open_clip_version": open_clip.__version__, "torch_version": torch.__version__,
                                 "seed": SEED, "labels": LABELS, "templates": TEMPLATES, "models": {}}
    for name, model_cfg in MODELS.items():
        preprocess = {"interpolation": "bicubic", "resize_mode": "shortest",
                      "mean": list(fmt.CLIP_MEAN), "std": list(fmt.CLIP_STD), **PREPROCESS.get(name, {})}
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
        spec = fmt.OpenClipSpec.from_config(config)
        with tempfile.TemporaryDirectory() as tmp:
            state = fmt.random_state_dict(spec, seed=SEED, logit_bias=model_cfg.get("init_logit_bias"))
            if model_cfg.get("custom_text"):
                state = fmt.as_custom_text(state)
            fmt.write_checkpoint(Path(tmp), config, state)
            model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{tmp}")
            tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp}")
        model.eval()
        images = []
        for index in range(3):
            path = HERE / "images" / f"{name}-{index}.png"
            Image.fromarray(pattern(spec.image_size, index)).save(path, optimize=True)
            images.append(path.name)
        pixels = torch.stack([transform(Image.open(HERE / "images" / n).convert("RGB")) for n in images])
        texts = [template.format(label) for label in LABELS for template in TEMPLATES]
        with torch.no_grad():
            image_features = model.encode_image(pixels, normalize=True)
            text_features = model.encode_text(tokenizer(texts), normalize=True)
            classifier = open_clip.build_zero_shot_classifier(model, tokenizer, LABELS, TEMPLATES)  # [d, K]
            logits = model.logit_scale.exp() * image_features @ classifier
            # sigmoid-trained checkpoints score each class on its own, as open_clip's get_logits does with a bias
            probs = logits.softmax(dim=-1) if model.logit_bias is None else (logits + model.logit_bias).sigmoid()
        tokens = [[int(t) for t in row[: int(row.argmax()) + 1]] for row in tokenizer(texts)]
        golden["models"][name] = {  # type: ignore[index]
            "config": config, "images": images, "texts": texts, "tokens": tokens,
            "logit_scale": float(model.logit_scale.detach().exp()),
            "logit_bias": None if model.logit_bias is None else float(model.logit_bias.detach()),
            "image_embeddings": image_features.tolist(), "text_embeddings": text_features.tolist(),
            "zero_shot_probs": probs.tolist(),
        }
        print(name, "top-1", probs.argmax(-1).tolist(), "max prob", float(probs.max()))
    (HERE / "open_clip_golden.json").write_text(json.dumps(golden) + "\n")


if __name__ == "__main__":
    main()
