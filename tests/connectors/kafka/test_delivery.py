"""Delivery semantics against the embedded broker over TCP: every input id ends in exactly one of output /
quarantine / dead-letter; corrupt inputs become specific dead letters and the stream goes on; SIGKILLed consumers
lose nothing and re-deliver only uncommitted batches."""

from __future__ import annotations

import base64
import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cola_moderation.connectors.kafka.transactions import open_kafka
from tests.connectors.jobs import JPEG, PNG, SERIALIZER, drain
from tests.connectors.kafka_util import produce, read_topic, topics_config

REPO = Path(__file__).resolve().parents[3]
MiB = 1024 * 1024


def mixed_inputs(count: int, *, seed: int = 0) -> tuple[list[tuple[bytes | None, bytes, list]], dict[str, str]]:
    """(key, value, headers) messages and id -> expected route ('output', 'quarantine', 'dead_letter');
    keyless messages are returned with key None and id filled in after producing."""
    rng = random.Random(seed)
    messages: list[tuple[bytes | None, bytes, list]] = []
    expected: dict[str, str] = {}
    for i in range(count):
        size = rng.randint(100, 3000)
        if i in (7, 2500, 4999):
            size = 5 * MiB - 4096
        elif i % 250 == 3:
            size = 200_000
        body = rng.randbytes(size)
        if i % 37 == 0:
            value, route = b"GIF89a" + body, "dead_letter"  # not PNG/JPEG: dead letter at the decode stage
        elif i % 101 == 0:
            value, route = b"", "dead_letter"  # empty value: dead letter at the source stage
        else:
            value, route = (PNG if i % 2 else JPEG) + body, "output"
        headers = [("trace", f"t{i}".encode())]
        if route == "output" and i % 53 == 0:
            headers.append(("route", b"quarantine"))
            route = "quarantine"
        key = None if i % 499 == 11 else f"id-{i}".encode()
        messages.append((key, value, headers))
        expected[f"id-{i}"] = route
    return messages, expected


def ids_from_positions(config, messages, positions, expected: dict[str, str]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Replace keyless messages' ids by topic:partition:offset."""
    result = {}
    for i, ((key, _value, _headers), (partition, offset)) in enumerate(zip(messages, positions, strict=True)):
        record_id = key.decode() if key else f"{config.input_topics[0]}:{partition}:{offset}"
        result[record_id] = expected[f"id-{i}"]
    return result


def routed_ids(bootstrap: str, config, expected: dict[str, str]) -> dict[str, collections.Counter]:  # type: ignore[no-untyped-def]
    counts = collections.Counter(expected.values())
    out = read_topic(bootstrap, config.output_topic, expect=counts["output"])
    quarantine = read_topic(bootstrap, config.quarantine_topic, expect=counts["quarantine"], idle_s=0.5)
    dead = read_topic(bootstrap, config.dead_letter_topic, expect=counts["dead_letter"], idle_s=0.5)
    return {"output": collections.Counter(m.key.decode() for m in out),
            "quarantine": collections.Counter(m.key.decode() for m in quarantine),
            "dead_letter": collections.Counter(m.key.decode() for m in dead),
            "_messages": {"output": out, "dead_letter": dead}}  # type: ignore[dict-item]


def test_5000_mixed_messages_each_id_exactly_once(kafka_broker, kafka_client) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka_broker.bootstrap_servers
    config = topics_config(bootstrap, partitions=3, max_batch_records=200, client=kafka_client)
    messages, expected = mixed_inputs(5000)
    positions = produce(bootstrap, config.input_topics[0], messages)
    expected = ids_from_positions(config, messages, positions, expected)
    started = time.perf_counter()
    source, sink = open_kafka(config, SERIALIZER)
    with source, sink:
        committed = drain(source, sink, idle_exit_s=3.0)
    elapsed = time.perf_counter() - started
    assert committed == 5000
    routed = routed_ids(bootstrap, config, expected)
    for route in ("output", "quarantine", "dead_letter"):
        want = {i for i, r in expected.items() if r == route}
        got = routed[route]
        assert set(got) == want, f"{route}: missing {sorted(want - set(got))[:5]}, extra {sorted(set(got) - want)[:5]}"
        assert max(got.values()) == 1, f"{route}: duplicates {[i for i, c in got.items() if c > 1][:5]}"
    # the three 5 MB images went through intact (output value carries their source position)
    big = {json.loads(m.value)["id"] for m in routed["_messages"]["output"]}  # type: ignore[index]
    assert {"id-7", "id-2500"} <= big
    print(f"\n5000 mixed messages source->sink in {elapsed:.1f} s (incl. ~3 s group join + 3 s idle exit)")


def test_corrupt_records_become_specific_dead_letters_and_stream_continues(kafka_broker, kafka_client) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka_broker.bootstrap_servers
    config = topics_config(bootstrap, value_format="json", max_batch_records=10, client=kafka_client)
    def good(i: int) -> bytes:
        return json.dumps({"id": f"ok-{i}", "image_b64": base64.b64encode(PNG + b"x" * i).decode(),
                           "user": f"u{i}"}).encode()

    messages = [(None, good(0), []),
                (b"k-notjson", b"{not json", [("trace", b"a")]),
                (b"k-nob64", json.dumps({"id": "nob64", "image_b64": "!!!"}).encode(), []),
                (b"k-noimage", json.dumps({"id": "noimage"}).encode(), []),
                (b"k-list", b"[1, 2]", []),
                (None, json.dumps({"id": "gif", "image_b64": "R0lGODlh"}).encode(), []),
                (None, good(1), [])]
    produce(bootstrap, config.input_topics[0], messages)
    source, sink = open_kafka(config, SERIALIZER)
    with source, sink:
        assert drain(source, sink, idle_exit_s=2.0) == len(messages)
    outputs = read_topic(bootstrap, config.output_topic, expect=2)
    assert sorted(json.loads(m.value)["id"] for m in outputs) == ["ok-0", "ok-1"]
    assert json.loads(outputs[0].value)["metadata"]["user"] in ("u0", "u1")
    dead_messages = read_topic(bootstrap, config.dead_letter_topic, expect=5)
    dead = {m.key.decode(): (dict(m.headers), m.value) for m in dead_messages}
    assert set(dead) == {"k-notjson", "k-nob64", "k-noimage", "k-list", "gif"}
    headers, value = dead["k-notjson"]
    assert value == b"{not json"  # the original bytes
    assert headers["error.class"] == b"MalformedRecordError" and headers["error.stage"] == b"source"
    assert b"not a JSON envelope" in headers["error.message"]
    assert headers["source.topic"] == config.input_topics[0].encode() and headers["source.offset"] == b"1"
    assert headers["trace"] == b"a"  # original headers kept
    assert b"not valid base64" in dead["k-nob64"][0]["error.message"]
    assert b"'image_b64'" in dead["k-noimage"][0]["error.message"]
    assert b"must be an object, got list" in dead["k-list"][0]["error.message"]
    gif_headers, gif_value = dead["gif"]
    assert gif_headers["error.class"] == b"DecodeError" and gif_headers["error.stage"] == b"decode"
    assert gif_value == b"GIF89a"  # decoded image bytes for a failure after the source stage


def _commit_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("commit_batches", [1, 3])
def test_sigkill_three_times_loses_nothing_and_redelivers_only_uncommitted(kafka_broker, kafka_client,  # type: ignore[no-untyped-def]
                                                                           tmp_path: Path, commit_batches: int) -> None:
    """A commit per batch, or per group of three (``kafka.commit_batches``): a kill re-delivers at most what was
    written and not committed."""
    bootstrap = kafka_broker.bootstrap_servers
    batch_records = 40
    config = topics_config(bootstrap, partitions=2, max_batch_records=batch_records, client=kafka_client,
                           commit_batches=commit_batches, commit_interval_ms=5000)
    messages, expected = mixed_inputs(2400, seed=1)
    messages = [(k, v[:3000], h) for k, v, h in messages]  # small messages: the point here is crashes
    positions = produce(bootstrap, config.input_topics[0], messages)
    expected = ids_from_positions(config, messages, positions, expected)
    log = tmp_path / "commits.jsonl"
    command = [sys.executable, "-m", "tests.connectors.jobs", "kafka", "--config", config.model_dump_json(),
               "--commit-log", str(log), "--sleep-per-batch", "0.1", "--idle-exit", "4"]
    committed_before: list[dict[str, int]] = []  # per run: partition -> highest committed offset of earlier runs
    high: dict[str, int] = {}
    for run in range(4):
        committed_before.append(dict(high))
        started = time.monotonic()
        process = subprocess.Popen([*command, "--run", str(run)], cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
        if run < 3:
            seen = len(_commit_log(log))
            deadline = time.monotonic() + 60
            while len(_commit_log(log)) < seen + 8 and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.02)
            assert process.poll() is None, f"job exited early: {process.communicate()[1].decode()[-2000:]}"
            time.sleep((0.075, 0.02, 0.075)[run])  # kill mid-batch: flushed-not-committed, or not flushed
            os.kill(process.pid, signal.SIGKILL)
            print(f"run {run} killed after {time.monotonic() - started:.1f} s", end="; ")
            process.wait()
        else:
            _out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err.decode()[-2000:]
            print(f"run {run} finished after {time.monotonic() - started:.1f} s")
        for entry in _commit_log(log):
            for partition, offset in entry["offsets"].items():
                high[partition] = max(high.get(partition, 0), offset)
    routed = routed_ids(bootstrap, config, expected)
    for route in ("output", "quarantine", "dead_letter"):
        want = {i for i, r in expected.items() if r == route}
        assert set(routed[route]) == want, f"{route}: lost {sorted(want - set(routed[route]))[:5]}"
    # A record processed by run r must come from at or after the commits of runs < r: committed batches are
    # never delivered again.
    for message in routed["_messages"]["output"]:  # type: ignore[index]
        record = json.loads(message.value)
        partition = f"{record['source']['topic']}:{record['source']['partition']}"
        run = record["metadata"]["run"]
        floor = committed_before[run].get(partition, 0)
        assert record["source"]["offset"] >= floor, (record["id"], run, floor)
    duplicates = sum(c - 1 for route in ("output", "quarantine", "dead_letter") for c in routed[route].values())
    bound = 3 * commit_batches * batch_records  # at most the batches written, not committed, at each kill
    assert duplicates <= bound, duplicates
    print(f"\n3 SIGKILLs: {duplicates} re-delivered inputs (bound {bound}), none lost")
