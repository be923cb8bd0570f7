"""cola stream end to end: embedded broker -> consumer actors -> Ray Serve deployment -> broker."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cola_moderation.pipeline.runtime.config import parse_config
from tests.connectors.kafka_util import produce, read_topic, topics_config


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_stream_job_exact_accounting(kafka_broker: Any, tiny_model_dir: Path, guarantee: str) -> None:
    from cola_moderation.pipeline.jobs.stream import run_stream_job

    bootstrap = kafka_broker.bootstrap_servers
    topics = topics_config(bootstrap, partitions=2, value_format="json", guarantee=guarantee)
    config = parse_config({
        "model": {"path": str(tiny_model_dir), "device": "cpu"},
        "taxonomy": {"labels": ["cat", "dog", "car"]},
        "method": "clip", "detector": {"enabled": False}, "policy": {"rules": {"car": {"review": 0.0}}},
        "kafka": {**topics.model_dump(), "max_batch_records": 8},
        "ray": {"worker_num_cpus": 0.5, "num_cpus": 2},
        "serve": {"min_replicas": 1, "max_replicas": 1},
        "stream": {"consumers": 2, "consumer_num_cpus": 0.25},
    })
    import base64

    messages = []
    for i in range(60):
        if i % 20 == 5:
            value = b"{not json"  # malformed envelope: a source-stage dead letter
        else:
            image = png(i) if i % 20 != 9 else b"\x89PNG\r\n\x1a\n-truncated"
            value = json.dumps({"id": f"e{i}", "image_b64": base64.b64encode(image).decode(), "shop": "s1"}).encode()
        messages.append((f"e{i}".encode(), value, []))
    produce(bootstrap, topics.input_topics[0], messages)

    summary = run_stream_job(config, idle_timeout_s=4.0, stop_event=threading.Event())
    assert summary.inputs == 60
    isolation = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
    out, quarantined, dead = (read_topic(bootstrap, topic, expect=summary.routes[route], idle_s=0.5,
                                         isolation_level=isolation)
                              for route, topic in (("output", topics.output_topic),
                                                   ("quarantine", topics.quarantine_topic),
                                                   ("dead_letter", topics.dead_letter_topic)))
    assert len(out) + len(quarantined) + len(dead) == 60  # output + dead-letter = input, nothing twice
    assert sorted(m.key.decode() for m in out + quarantined + dead) == sorted(f"e{i}" for i in range(60))
    stages = sorted(dict(m.headers)["error.stage"].decode() for m in dead)
    assert stages == ["decode"] * 3 + ["source"] * 3
    record = json.loads((out or quarantined)[0].value)
    assert record["metadata"]["shop"] == "s1" and record["model"] == str(tiny_model_dir)
