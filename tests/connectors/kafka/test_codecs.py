"""Compressed record batches: a peer producer (confluent-kafka / librdkafka) writes every Kafka codec, the source
reads every record back; a codec whose library is absent stops the source with one line naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cola_moderation.connectors.kafka.codecs import CODEC_PACKAGES, missing_codecs
from cola_moderation.connectors.kafka.sink import KafkaSink
from cola_moderation.connectors.kafka.source import KafkaSource
from tests.connectors.jobs import PNG, SERIALIZER, drain
from tests.connectors.kafka_util import read_topic, topics_config

confluent_kafka = pytest.importorskip("confluent_kafka")

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
ROOT = Path(__file__).resolve().parents[3]


def produce_compressed(bootstrap: str, topic: str, codec: str, count: int, *, prefix: str = "") -> None:
    """``count`` records in as few batches as librdkafka makes, compressed with ``codec``."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                                         "linger.ms": 50, "message.max.bytes": 16 << 20})
    for i in range(count):
        # compressible payload, so every codec really compresses the batch
        producer.produce(topic, key=f"{prefix}{codec}-{i}".encode(), value=PNG + bytes(2000) + str(i).encode())
    assert producer.flush(30) == 0


def test_every_codec_is_a_dependency() -> None:
    assert missing_codecs() == []
    assert set(CODEC_PACKAGES) == set(CODECS) - {"none"}


def test_every_codec_is_read_back_by_the_source(kafka_broker: Any) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    config = topics_config(bootstrap)
    for codec in CODECS:
        produce_compressed(bootstrap, config.input_topics[0], codec, 10)
    with KafkaSource(config) as source, KafkaSink(config, SERIALIZER) as sink:
        assert drain(source, sink, idle_exit_s=2.0) == 50
    out = read_topic(bootstrap, config.output_topic, expect=50, idle_s=0.5)
    keys = sorted(m.key.decode() for m in out)
    assert keys == sorted(f"{codec}-{i}" for codec in CODECS for i in range(10))
    assert {json.loads(m.value)["label"] for m in out} == {"png"}
    assert read_topic(bootstrap, config.dead_letter_topic, expect=0, idle_s=0.5) == []


def test_a_codec_without_its_library_stops_with_one_line_on_every_start(kafka_broker: Any, tmp_path: Path) -> None:
    """``snappy`` made unimportable in a fresh interpreter (as when python-snappy is not installed): the source stops
    with the codec, topic, partition and offset, commits nothing, and a restart stops the same way (no loop)."""
    bootstrap = kafka_broker.bootstrap_servers
    config = topics_config(bootstrap)
    produce_compressed(bootstrap, config.input_topics[0], "snappy", 5)
    script = textwrap.dedent(f"""
        import sys
        import time
        sys.modules["snappy"] = None  # import snappy -> ImportError, as without python-snappy
        from cola_moderation.connectors.config import KafkaConfig
        from cola_moderation.connectors.kafka.codecs import UnsupportedCompressionError
        from cola_moderation.connectors.kafka.source import KafkaSource
        config = KafkaConfig.model_validate_json({config.model_dump_json()!r})
        with KafkaSource(config) as source:
            try:
                deadline = time.monotonic() + 60  # a loaded machine's group join can outlast 20 polls (a full run)
                while time.monotonic() < deadline:
                    source.poll()
            except UnsupportedCompressionError as exc:
                print("ERROR", exc)
                sys.exit(2)
        sys.exit(0)
        """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _start in range(2):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                              cwd=ROOT)
        assert done.returncode == 2, done.stdout + done.stderr
        line = done.stdout.strip().splitlines()[-1]
        assert "snappy" in line and f"topic {config.input_topics[0]!r} partition 0 at offset 0" in line, line
        assert "pip install python-snappy" in line
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=config.group_id, enable_auto_commit=False)
    try:
        assert consumer.committed(TopicPartition(config.input_topics[0], 0)) is None
    finally:
        consumer.close()
