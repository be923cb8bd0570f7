"""Sources and sinks: Kafka (with dead-letter and quarantine routes), Parquet, and the embedded broker.

The pipeline talks to connectors only through :class:`cola_moderation.connectors.base.Source` (``poll`` ->
:class:`Batch`,
``commit``, ``pause``/``resume``, ``close``) and :class:`cola_moderation.connectors.base.Sink` (``add(route, record)``,
``add_dead_letter``, ``flush(batch)`` = durable acknowledgement, ``close``); records are the frozen dataclasses of
:mod:`cola_moderation.connectors.records`. Implementations: :mod:`~cola_moderation.connectors.kafka.source`,
:mod:`~cola_moderation.connectors.kafka.sink`,
:mod:`~cola_moderation.connectors.parquet.source`, :mod:`~cola_moderation.connectors.parquet.sink`;
:mod:`~cola_moderation.connectors.local.broker` runs Tansu locally.
Delivery is at-least-once: commit a batch only after the sink flushed it.
"""
