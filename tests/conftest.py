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
    from cola_moderation.operators.backbones.checkpoint import TINY, new_clip_model, save_checkpoint

    return save_checkpoint(new_clip_model(TINY, seed=0), tmp_path_factory.mktemp("tiny-clip"),
                           image_size=TINY.image_size)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from cola_moderation.operators.backbones.registry import load_backbone
    from cola_moderation.operators.config import ModelConfig

    return load_backbone(ModelConfig(path=str(tiny_model_dir), device="cpu"))


class ExternalBroker:
    """A Kafka cluster the tests did not start: ``COLA_TEST_BOOTSTRAP=host:port[,host:port]``."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers


@pytest.fixture(scope="session")
def kafka_broker():  # type: ignore[no-untyped-def]
    """An embedded Tansu broker on a free 127.0.0.1 port for the whole session (memory storage); tests use their
    own topic names and consumer groups. ``COLA_TEST_BOOTSTRAP=host:port`` runs the Kafka tests against that broker
    instead (e.g. an Apache Kafka, for the transaction features Tansu lacks; see docs/delivery.md)."""
    external = os.environ.get("COLA_TEST_BOOTSTRAP")
    if external:
        yield ExternalBroker(external)
        return
    from cola_moderation.connectors.local.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def broker_transactions(kafka_broker):  # type: ignore[no-untyped-def]
    """The transaction checks of :func:`~cola_moderation.connectors.local.kafka_tools.probe_transactions` that the test
    broker fails (empty when it implements Kafka transactions fully), probed once per session."""
    from cola_moderation.connectors.local.kafka_tools import probe_transactions

    return [check for check in probe_transactions(kafka_broker.bootstrap_servers, timeout_s=1.5) if not check.ok]
