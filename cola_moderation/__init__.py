"""cola-moderation: robust zero-shot content moderation (CLIP + COLA) on Kafka, Parquet and HTTP, on Ray.

The names an application embeds, imported on first use (``import cola_moderation`` itself stays light)::

    import cola_moderation as cm

    config = cm.load_config("reference")        # a YAML path or a bundled name (reference, moderation)
    moderator = cm.build_moderator(config)      # decode + CLIP / COLA / cascade + detector, model loaded
    verdicts = moderator.moderate([image_bytes])        # Moderation | DecodeError per input
    decision = cm.decide(cm.build_policy(config), verdicts[0])   # action, quarantine, reasons
    ds.map_batches(cm.ModerateBatch, fn_constructor_kwargs={"config": "reference"}, ...)   # Ray Data

Subpackages: :mod:`cola_moderation.operators` (model side; imports without Ray or Kafka),
:mod:`cola_moderation.connectors` (Kafka and Parquet sources and sinks) and :mod:`cola_moderation.pipeline` (config,
Ray jobs, Serve app, CLI); :mod:`cola_moderation.resources` finds the bundled configs, samples and models. In the
repository the subpackages are the top-level folders ``operators/``, ``connectors/`` and ``pipeline/``; this directory
links them under one import name, and the wheel installs them here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from cola_moderation import _moved

_moved.install()

_EXPORTS: dict[str, str] = {
    "load_config": "cola_moderation.pipeline.runtime.config",
    "PipelineConfig": "cola_moderation.pipeline.runtime.config",
    "build_moderator": "cola_moderation.pipeline.runtime.library",
    "build_policy": "cola_moderation.pipeline.runtime.library",
    "decide": "cola_moderation.pipeline.runtime.library",
    "ModerateBatch": "cola_moderation.pipeline.runtime.library",
    "Moderator": "cola_moderation.operators.moderator",
    "Moderation": "cola_moderation.operators.moderator",
    "DecodedBatch": "cola_moderation.operators.decode",
    "Policy": "cola_moderation.operators.policy",
    "Decision": "cola_moderation.operators.policy",
    "ColaError": "cola_moderation.operators.errors",
    "ConfigError": "cola_moderation.operators.errors",
    "DecodeError": "cola_moderation.operators.errors",
    "DeviceError": "cola_moderation.operators.errors",
    "ModelLoadError": "cola_moderation.operators.errors",
    "MissingDependencyError": "cola_moderation.operators.errors",
}

__all__ = [  # noqa: RUF022 - grouped as in _EXPORTS
    "__version__",
    "load_config", "PipelineConfig", "build_moderator", "build_policy", "decide", "ModerateBatch",
    "Moderator", "Moderation", "DecodedBatch", "Policy", "Decision",
    "ColaError", "ConfigError", "DecodeError", "DeviceError", "ModelLoadError", "MissingDependencyError",
]

if TYPE_CHECKING:
    from cola_moderation.operators.decode import DecodedBatch
    from cola_moderation.operators.errors import (
        ColaError,
        ConfigError,
        DecodeError,
        DeviceError,
        MissingDependencyError,
        ModelLoadError,
    )
    from cola_moderation.operators.moderator import Moderation, Moderator
    from cola_moderation.operators.policy import Decision, Policy
    from cola_moderation.pipeline.runtime.config import PipelineConfig, load_config
    from cola_moderation.pipeline.runtime.library import ModerateBatch, build_moderator, build_policy, decide


def __getattr__(name: str) -> Any:  # PEP 562: import the defining module on first access
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cola_moderation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
