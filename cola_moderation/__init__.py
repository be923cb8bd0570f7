"""cola-moderation: robust zero-shot content moderation (CLIP + COLA) on Kafka, Parquet and HTTP, on Ray.

Subpackages: :mod:`cola_moderation.operators` (model side; imports without Ray or Kafka),
:mod:`cola_moderation.connectors` (Kafka and Parquet sources and sinks) and :mod:`cola_moderation.pipeline` (config,
Ray jobs, Serve app, CLI). In the repository they are the top-level folders ``operators/``, ``connectors/`` and
``pipeline/``; this directory links them under one import name, and the wheel installs them here.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
