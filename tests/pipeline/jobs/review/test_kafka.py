"""The console over a Kafka quarantine topic on the embedded broker: records written by the pipeline's own worker and
Kafka sink, images read back from the input messages, decisions on the decisions topic read by a plain consumer."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from cola_moderation.connectors.kafka.admin import ensure_topics
from cola_moderation.connectors.kafka.sink import KafkaSink
from cola_moderation.connectors.kafka.source import KafkaSource
from cola_moderation.operators.errors import ConfigError
from cola_moderation.pipeline.cli import main
from cola_moderation.pipeline.jobs.review.app import ReviewConsole, build_app
from cola_moderation.pipeline.jobs.review.auth import Authenticator
from cola_moderation.pipeline.jobs.review.decision_log import DecisionLog, KafkaDecisions
from cola_moderation.pipeline.jobs.review.items import KafkaItems
from cola_moderation.pipeline.runtime.config import parse_config
from cola_moderation.pipeline.runtime.decisions import decision_json_schema
from cola_moderation.pipeline.runtime.records import OutputSerializer
from cola_moderation.pipeline.runtime.worker import ModerationWorker
from tests.pipeline.jobs.review.data import ServerThread, config_dict, png
from tests.pipeline.jobs.review.test_app import TOKEN, Client, item_path

IDS = ["k-one", "k-two", "k-<three>"]


@pytest.fixture(scope="module")
def kafka_setup(kafka_broker, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import torch

    torch.set_num_threads(1)
    tag = uuid.uuid4().hex[:8]
    bootstrap = kafka_broker.bootstrap_servers
    settings = config_dict(tiny_model_dir)
    settings["policy"] = {**settings["policy"], "audit_sample": 1.0}  # every record to review
    settings["kafka"] = {"bootstrap_servers": bootstrap, "input_topics": [f"in-{tag}"], "output_topic": f"out-{tag}",
                         "quarantine_topic": f"q-{tag}", "dead_letter_topic": f"dead-{tag}", "group_id": f"g-{tag}",
                         "decisions_topic": f"decisions-{tag}"}
    config = parse_config(settings)
    config_path = tmp_path_factory.mktemp("kafka-review") / "review.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    kafka = config.kafka
    ensure_topics(bootstrap, {kafka.input_topics[0]: 1, kafka.output_topic: 1, kafka.quarantine_topic: 1,
                              kafka.dead_letter_topic: 1})
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for index, record_id in enumerate(IDS):
        producer.send(kafka.input_topics[0], key=record_id.encode(), value=png(100 + index))
    producer.flush()
    producer.close()
    worker = ModerationWorker(config)
    seen = 0
    with KafkaSource(kafka) as source, KafkaSink(kafka, OutputSerializer()) as sink:
        for _ in range(60):
            batch = source.poll()
            for outcome in worker.process(batch.records).outcomes:
                sink.add_outcome(outcome)
            sink.flush(batch)
            source.commit(batch)
            seen += len(batch.records)
            if seen >= len(IDS):
                break
    worker.close()
    assert seen == len(IDS)
    return config, config_path


def test_kafka_quarantine_topic_to_decisions_topic(kafka_setup, capsys) -> None:  # type: ignore[no-untyped-def]
    config, config_path = kafka_setup
    kafka = config.kafka
    items = KafkaItems(kafka, decode=config.decode)
    log = DecisionLog([KafkaDecisions(kafka)])
    assert log.load() == 0
    app = build_app(ReviewConsole(items=items, decisions=log, labels=config.taxonomy.label_names,
                                  auth=Authenticator({TOKEN: "dana"})))
    try:
        with ServerThread(app) as server:
            client = Client(server.port)
            status, listing = client.json("GET", "/api/items")
            assert status == 200 and [i["id"] for i in listing["items"]] == IDS
            status, headers, image = client.request("GET", item_path(IDS[2], "image"))
            assert status == 200 and image.startswith(b"\x89PNG")  # read back from the input message
            assert client.decide(IDS[0], {"decision": "confirm"})[0] == 201
            assert client.decide(IDS[2], {"decision": "relabel", "label": "car"})[0] == 201
            assert client.decide(IDS[2], {"decision": "relabel", "label": "car"})[0] == 200  # idempotent
            assert client.decide(IDS[2], {"decision": "allow", "note": "fine"})[0] == 201  # revision 2
            # The console follows the topic: a record quarantined now shows up without a restart.
            late = {**json.loads(json.dumps(items.get(IDS[0]).record.to_json())), "id": "k-late"}  # type: ignore[union-attr]
            producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
            producer.send(kafka.quarantine_topic, key=b"k-late", value=json.dumps(late).encode())
            producer.flush()
            producer.close()
            deadline = time.monotonic() + 30
            while client.json("GET", "/api/items?status=pending")[1]["counts"]["total"] < len(IDS) + 1:
                assert time.monotonic() < deadline, "the late record never appeared"
                time.sleep(0.2)
            assert client.json("GET", item_path("k-late"))[1]["status"] == "pending"
    finally:
        items.close()
        log.close()

    # A plain consumer of the decisions topic.
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    consumer.assign([TopicPartition(kafka.decisions_topic, 0)])
    messages = list(consumer)
    consumer.close()
    assert [m.key.decode() for m in messages] == [IDS[0], IDS[2], IDS[2]]
    headers = dict(messages[0].headers)
    assert headers["content-type"] == b"application/json" and headers["cola.record-type"] == b"decision"
    documents = [json.loads(m.value) for m in messages]
    validator = jsonschema.Draft202012Validator(decision_json_schema(), format_checker=jsonschema.FormatChecker())
    for document in documents:
        validator.validate(document)
    assert [(d["decision"], d["revision"], d["final_label"]) for d in documents] == [
        ("confirm", 1, documents[0]["original_label"]), ("relabel", 1, "car"), ("allow", 2, None)]
    assert documents[2]["supersedes"] == documents[1]["decision_id"]
    assert documents[0]["source"]["topic"] == kafka.input_topics[0]

    # A restarted console reads its decisions back from the topic.
    again = DecisionLog([KafkaDecisions(kafka)])
    assert again.load() == 3
    assert {d.decision_id for d in again.history(IDS[2])} == {documents[1]["decision_id"], documents[2]["decision_id"]}
    again.close()

    # cola calibrate reads the decisions topic too (newest decision per id: k-one confirmed, k-<three> allowed).
    assert main(["calibrate", "--config", str(config_path), "--decisions", "kafka:", "--precision", "1.0"]) == 0
    printed = capsys.readouterr()
    assert "on 2 reviewed ids" in printed.err
    label = documents[0]["original_label"]
    assert f"| {label} |" in printed.out


def test_a_missing_quarantine_topic_is_one_error(kafka_setup) -> None:  # type: ignore[no-untyped-def]
    config, _ = kafka_setup
    with pytest.raises(ConfigError, match="does not exist"):
        KafkaItems(config.kafka, decode=config.decode, topic=f"nowhere-{uuid.uuid4().hex[:6]}")
