"""Kafka: source (consumer, bounded polls, commit after the sink acknowledged), sink (acks=all producer with output,
quarantine and dead-letter topics), exactly-once transactions, and the admin calls the jobs need.
"""

from cola_moderation.connectors.kafka.client_logs import quiet_cancelled_refreshes

quiet_cancelled_refreshes()
