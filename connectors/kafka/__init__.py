"""Kafka: source (consumer, bounded polls, commit after the sink acknowledged), sink (acks=all producer with output,
quarantine and dead-letter topics), exactly-once transactions, and the admin calls the jobs need.
"""
