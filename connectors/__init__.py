"""Sources and sinks: Kafka (with dead-letter and quarantine routes), Parquet, and the embedded broker.

The pipeline talks to connectors only through :class:`connectors.base.Source` (``poll`` -> :class:`Batch`,
``commit``, ``pause``/``resume``, ``close``) and :class:`connectors.base.Sink` (``add(route, record)``,
``add_dead_letter``, ``flush(batch)`` = durable acknowledgement, ``close``); records are the frozen dataclasses of
:mod:`connectors.records`. Implementations: :mod:`~connectors.kafka_source`, :mod:`~connectors.kafka_sink`,
:mod:`~connectors.parquet_source`, :mod:`~connectors.parquet_sink`; :mod:`~connectors.broker` runs Tansu locally.
Delivery is at-least-once: commit a batch only after the sink flushed it.
"""
