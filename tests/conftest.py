"""Shared fixtures: a tiny random-weight CLIP saved in the standard layout and loaded back like a hub model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel (32 px, 16-d embeddings) with OpenAI's CLIP BPE vocabulary, via save_pretrained."""
    from cola_moderation.operators.checkpoint import TINY, new_clip_model, save_checkpoint

    return save_checkpoint(new_clip_model(TINY, seed=0), tmp_path_factory.mktemp("tiny-clip"),
                           image_size=TINY.image_size)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from cola_moderation.operators.backbone import ClipBackbone
    from cola_moderation.operators.config import ModelConfig

    return ClipBackbone.load(ModelConfig(path=str(tiny_model_dir), device="cpu"))


@pytest.fixture(scope="session")
def kafka_broker():  # type: ignore[no-untyped-def]
    """An embedded Tansu broker on a free 127.0.0.1 port for the whole session (memory storage); tests use their
    own topic names and consumer groups."""
    from cola_moderation.connectors.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker
