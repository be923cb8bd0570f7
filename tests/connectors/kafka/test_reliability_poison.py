"""Reliability (red team): poison messages in a real topic become dead letters and the consumer keeps going; what it
writes is standard JSON."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cola_moderation.connectors.json_codec import dumps_strict, loads_strict
from cola_moderation.connectors.kafka.source import KafkaSource, message_to_record
from cola_moderation.connectors.records import DeadLetter
from tests.connectors.kafka_util import produce, read_topic, topics_config


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def envelope(i: int, **extra: Any) -> bytes:
    return json.dumps({"id": f"e{i}", "image_b64": base64.b64encode(png(i)).decode(), **extra}).encode()


POISON = {
    "nested-100k": b"[" * 100_000,
    "nested-object-100k": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep-in-envelope": b'{"id": "p", "image_b64": "QUJD", "m": ' + b"[" * 40 + b"]" * 40 + b"}",
    "nan": b'{"id": "p", "image_b64": "QUJD", "m": NaN}',
    "infinity": b'{"id": "p", "image_b64": "QUJD", "m": -Infinity}',
    "overflow": b'{"id": "p", "image_b64": "QUJD", "m": 1e400}',
    "not-utf8": b'{"id": "\xff\xfe", "image_b64": "QUJD"}',
    "lone-surrogate": b'{"id": "\\ud800", "image_b64": "QUJD"}',
    "huge-int": b'{"id": "p", "image_b64": "QUJD", "m": ' + b"9" * 5000 + b"}",
}


def test_poison_messages_are_dead_letters_and_the_consumer_goes_on(kafka_broker: Any, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topics = topics_config(bootstrap, value_format="json", max_batch_records=8)
    messages = []
    for i in range(30):
        messages.append((f"e{i}".encode(), envelope(i, shop="s1"), []))
        if i % 3 == 1:
            name = list(POISON)[(i // 3) % len(POISON)]
            messages.append((f"poison-{name}".encode(), POISON[name], []))
    produce(bootstrap, topics.input_topics[0], messages)

    records, dead = [], []
    with KafkaSource(topics, client_id="poison-test") as source:
        deadline = time.monotonic() + 60
        extra_polls = 5  # after everything arrived, to catch duplicates
        while time.monotonic() < deadline and extra_polls:
            batch = source.poll()
            records += batch.records
            dead += batch.dead_letters
            source.commit(batch)
            extra_polls -= len(records) + len(dead) >= len(messages)
    assert sorted(r.id for r in records) == sorted(f"e{i}" for i in range(30))  # every good record, once
    assert sorted(d.record.id for d in dead) == sorted(m[0].decode() for m in messages if m[0].startswith(b"poison"))
    by_name = {d.record.id.removeprefix("poison-"): d for d in dead}
    assert "too_deep" in by_name["nested-100k"].error_message and by_name["nested-100k"].error_stage == "source"
    assert by_name["nested-100k"].record.payload == POISON["nested-100k"]  # the original bytes, for replay
    assert "non_finite_number" in by_name["nan"].error_message
    # a second member of the group finds nothing: the poison offsets were committed with their batches
    with KafkaSource(topics, client_id="poison-test-2") as again:
        assert sum(len(again.poll()) for _ in range(25)) == 0

    # the dead letters go to the dead-letter topic through the real sink; headers are standard JSON
    from cola_moderation.connectors.kafka.sink import KafkaSink
    from tests.connectors.jobs import SERIALIZER

    with KafkaSink(topics, SERIALIZER) as sink:
        for letter in dead:
            sink.add_dead_letter(letter)
        sink.flush()
    written = read_topic(bootstrap, topics.dead_letter_topic, expect=len(dead), idle_s=0.3)
    assert sorted(m.key for m in written) == sorted(d.record.id.encode() for d in dead)
    nested = next(m for m in written if m.key == b"poison-nested-100k")
    assert nested.value == POISON["nested-100k"] and dict(nested.headers)["error.stage"] == b"source"


def test_every_parse_failure_is_a_dead_letter() -> None:
    class Message:
        def __init__(self, value: Any, key: Any = b"k", headers: Any = None) -> None:
            self.topic, self.partition, self.offset = "t", 0, 7
            self.value, self.key, self.headers = value, key, headers

    for name, value in POISON.items():
        result = message_to_record(Message(value), "json")
        assert isinstance(result, DeadLetter), name
    assert isinstance(message_to_record(Message(b"x", key=b"\xff", headers=[("h", b"\xff")]), "raw"),
                      type(message_to_record(Message(b"y"), "raw")))


def test_output_json_is_strict() -> None:
    text = dumps_strict({"score": float("nan"), "m": {"a": [float("inf"), -float("inf"), np.float32("nan")]}})
    assert loads_strict(text) == {"score": "NaN", "m": {"a": ["Infinity", "-Infinity", "NaN"]}}
