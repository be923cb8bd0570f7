"""``load_geometry``: a local checkpoint's image geometry is read without importing ``transformers`` (the batch job's
driver needs only the geometry)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cola_moderation.operators.backbones.registry import load_geometry
from cola_moderation.operators.backbones.transformers_clip import ClipBackbone
from cola_moderation.operators.config import ModelConfig

REPO = Path(__file__).resolve().parents[3]


def test_local_geometry_matches_the_loaded_model_and_skips_transformers(tiny_backbone: ClipBackbone,
                                                                         tiny_model_dir: Path) -> None:
    assert load_geometry(ModelConfig(path=str(tiny_model_dir))) == tiny_backbone.geometry
    code = ("import json, sys; from cola_moderation.operators.backbones.registry import load_geometry; "
            "from cola_moderation.operators.config import ModelConfig; "
            f"g = load_geometry(ModelConfig(path={str(tiny_model_dir)!r})); "
            "print(json.dumps([g.size, 'transformers' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [tiny_backbone.geometry.size, False]

