"""Sources and sinks: Kafka (with dead-letter and quarantine routes), Parquet, and the embedded broker."""
