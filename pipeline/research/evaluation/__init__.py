"""Robustness evaluation (``cola eval``): datasets, attacks x methods harness, metrics and the JSON/PNG report."""
