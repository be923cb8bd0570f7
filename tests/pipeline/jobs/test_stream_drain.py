"""Graceful stop of ``cola stream``: SIGTERM mid-stream finishes the batches in flight and commits what was written,
so a restart writes every remaining input once: 0 duplicates, 0 lost."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.connectors.kafka_util import produce, read_topic, topics_config

ROOT = Path(__file__).resolve().parents[3]
COUNT = 2000  # enough that a SIGTERM at the first output lands mid-stream on a quiet machine too


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def stream(config: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cola_moderation.pipeline.cli", "stream", "--config", str(config),
                             *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigterm_mid_stream_then_restart_writes_each_input_once(kafka_broker: Any, tiny_model_dir: Path,
                                                                 tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topics = topics_config(bootstrap, partitions=2, value_format="json", max_batch_records=8)
    config = tmp_path / "stream.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_model_dir), "device": "cpu"},
        "taxonomy": {"labels": ["cat", "dog", "car"]}, "method": "clip", "detector": {"enabled": False},
        "kafka": topics.model_dump(mode="json"),
        "ray": {"worker_num_cpus": 0.5, "num_cpus": 2}, "serve": {"min_replicas": 1, "max_replicas": 1},
        "stream": {"consumers": 1, "consumer_num_cpus": 0.25, "max_in_flight": 4},
    }))
    messages = [(f"d{i}".encode(), json.dumps({"id": f"d{i}", "image_b64": base64.b64encode(png(i)).decode()}
                                             ).encode(), []) for i in range(COUNT)]
    produce(bootstrap, topics.input_topics[0], messages)

    first = stream(config)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:  # SIGTERM once some output exists
        if read_topic(bootstrap, topics.output_topic, expect=1, timeout_s=0.5, idle_s=0.1):
            break
    assert first.poll() is None, first.communicate()[0][-3000:]
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=180)
    assert first.returncode == 0, out[-3000:]
    after_stop = read_topic(bootstrap, topics.output_topic, expect=1, idle_s=1.0)
    assert 0 < len(after_stop) < COUNT, "the stop did not land mid-stream"

    second = stream(config, "--idle-timeout", "5")
    out, _ = second.communicate(timeout=400)
    assert second.returncode == 0, out[-3000:]
    written = read_topic(bootstrap, topics.output_topic, expect=COUNT, idle_s=1.0)
    keys = Counter(m.key.decode() for m in written)
    duplicates = sum(n - 1 for n in keys.values())
    print(f"written before SIGTERM: {len(after_stop)}; after restart: {len(written)}; duplicates: {duplicates}")
    assert sorted(keys) == sorted(f"d{i}" for i in range(COUNT))  # nothing lost
    assert duplicates == 0
