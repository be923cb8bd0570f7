"""Local developer tools: the embedded Kafka-compatible broker (Tansu) and topic helpers. Used only by the CLI
(``cola broker``, ``cola demo``), tests and benchmarks, never by the jobs.
"""
