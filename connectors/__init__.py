"""Sources and sinks: Kafka (with dead-letter and quarantine routes), Parquet, and the embedded broker.

The pipeline talks to connectors only through :class:`cola_moderation.connectors.base.Source` (``poll`` ->
:class:`Batch`, ``commit``, ``pause``/``resume``, ``close``) and :class:`cola_moderation.connectors.base.Sink`
(``add(route, record)``, ``add_dead_letter``, ``flush(batch)`` = durable acknowledgement, ``close``); records are the
frozen dataclasses of :mod:`cola_moderation.connectors.records`. Implementations: :mod:`~.kafka` (source, sink,
exactly-once transactions) and :mod:`~.parquet` (source, sink); :mod:`~.registry` names the stream job's
connectors; :mod:`~.local` runs Tansu locally (developer tools, used by the CLI, tests and benchmarks only).
Delivery is at-least-once: commit a batch only after the sink flushed it.
"""
