"""Issue-27 acceptance on the reference config, end to end: a GIF showing a trouser for 20 ms and then a bag for 4 s
is blocked like the still bag under ``bag: {block: 0.5}`` (batch, stream, HTTP, classify); HEIC and AVIF uploads are
labelled; records compressed with every Kafka codec are all labelled by the stream job."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from cola_moderation.operators.decode import register_heif
from cola_moderation.pipeline.runtime.config import PipelineConfig, parse_config
from cola_moderation.resources import config_path

ROOT = Path(__file__).resolve().parents[3]
IMAGES = ROOT / "samples" / "images"
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def sample(name: str) -> Image.Image:
    return Image.open(IMAGES / name).convert("RGB")


def encoded(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    register_heif()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def evasive_gif() -> bytes:
    """A trouser for 20 ms, then a bag for 4 s."""
    return encoded(sample("trouser.png"), "GIF", save_all=True, append_images=[sample("bag.png")],
                   duration=[20, 4000], loop=0)


def inputs() -> dict[str, bytes]:
    return {"still-bag": (IMAGES / "bag.png").read_bytes(), "gif": evasive_gif(),
            "heic": encoded(sample("sneaker.png"), "HEIF", quality=95),
            "avif": encoded(sample("sneaker.png"), "AVIF", quality=95)}


def reference_with_bag_rule(**sections: Any) -> dict[str, Any]:
    data = yaml.safe_load(config_path("reference").read_text())
    data["policy"] = {**data.get("policy", {}), "rules": {"bag": {"block": 0.5}}}
    data.update(sections)
    return dict(data)


def reference_config(**sections: Any) -> PipelineConfig:
    return parse_config(reference_with_bag_rule(**sections), base_dir=config_path("reference").parent)


def check(records: dict[str, dict[str, Any]]) -> None:
    assert records["still-bag"]["action"] == "block" and records["still-bag"]["label"] == "bag"
    gif = records["gif"]
    assert (gif["action"], gif["label"], gif["frame"], gif["frame_count"]) == ("block", "bag", 1, 2)
    for name in ("heic", "avif"):
        assert records[name]["label"] == "sneaker", (name, records[name])


@pytest.mark.slow
def test_cola_classify(tmp_path: Path) -> None:
    config = tmp_path / "reference-bag.yaml"
    data = reference_with_bag_rule()
    data["model"] = {**data["model"], "device": "cpu"}
    config.write_text(yaml.safe_dump(data))
    files = {}
    for name, payload in inputs().items():
        files[name] = tmp_path / f"{name}.img"
        files[name].write_bytes(payload)
    done = subprocess.run([sys.executable, "-m", "cola_moderation.pipeline.cli", "classify", "--config", str(config),
                           *map(str, files.values())], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    by_name = {Path(line["path"]).stem: line for line in lines}
    assert by_name["gif"]["label"] == "bag" and (by_name["gif"]["frame"], by_name["gif"]["frame_count"]) == (1, 2)
    assert by_name["heic"]["label"] == "sneaker" and by_name["avif"]["label"] == "sneaker"


@pytest.mark.slow
def test_cola_batch(tmp_path: Path) -> None:
    from cola_moderation.pipeline.jobs.batch import run_batch_job

    payloads = inputs()
    pq.write_table(pa.table({"id": list(payloads), "image": list(payloads.values())}), tmp_path / "in.parquet")
    config = reference_config(ray={"worker_num_cpus": 1, "num_cpus": 2})
    run_batch_job(config, inputs=str(tmp_path / "in.parquet"), output=tmp_path / "out", progress=False)
    rows = ds.dataset(tmp_path / "out", partitioning="hive").to_table().to_pylist()
    assert len(rows) == 4 and all(row["route"] != "dead_letter" for row in rows)
    check({row["id"]: row for row in rows})


@pytest.mark.slow
def test_cola_stream_every_codec_and_the_animated_evasion(kafka_broker: Any) -> None:
    from cola_moderation.pipeline.jobs.stream import run_stream_job
    from tests.connectors.kafka.test_codecs import confluent_kafka
    from tests.connectors.kafka_util import read_topic, topics_config

    bootstrap = kafka_broker.bootstrap_servers
    topics = topics_config(bootstrap)
    payloads = inputs()
    bag = payloads["still-bag"]
    for codec in CODECS:
        producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                                             "linger.ms": 50})
        for i in range(10):
            producer.produce(topics.input_topics[0], key=f"{codec}-{i}".encode(), value=bag)
        if codec == "zstd":
            for name, payload in payloads.items():
                producer.produce(topics.input_topics[0], key=name.encode(), value=payload)
        assert producer.flush(30) == 0
    config = reference_config(kafka={**topics.model_dump(), "max_batch_records": 16},
                              ray={"worker_num_cpus": 0.5, "num_cpus": 2},
                              serve={"min_replicas": 1, "max_replicas": 1},
                              stream={"consumers": 1, "consumer_num_cpus": 0.25})
    summary = run_stream_job(config, idle_timeout_s=4.0, stop_event=threading.Event())
    assert summary.inputs == 54 and summary.routes.get("dead_letter", 0) == 0
    written = read_topic(bootstrap, topics.output_topic, expect=54, idle_s=0.5) + read_topic(
        bootstrap, topics.quarantine_topic, expect=0, idle_s=0.5)
    records = {m.key.decode(): json.loads(m.value) for m in written}
    assert sorted(records) == sorted([f"{c}-{i}" for c in CODECS for i in range(10)] + list(payloads))
    assert all(records[f"{c}-{i}"]["label"] == "bag" for c in CODECS for i in range(10))
    check(records)


@pytest.mark.slow
def test_post_v1_moderate() -> None:
    import httpx

    from cola_moderation.pipeline.jobs.serve_app import deploy_moderation, shutdown_moderation
    from tests.pipeline.jobs.test_serve_app import free_port

    config = reference_config(ray={"num_cpus": 2, "worker_num_cpus": 0.5},
                              serve={"port": free_port(), "min_replicas": 1, "max_replicas": 1})
    deploy_moderation(config)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{config.serve.port}", timeout=120) as client:
            records = {}
            for name, payload in inputs().items():
                media = {"gif": "image/gif", "heic": "image/heic", "avif": "image/avif"}.get(name, "image/png")
                response = client.post("/v1/moderate", content=payload, headers={"content-type": media})
                assert response.status_code == 200, response.text
                records[name] = response.json()
    finally:
        shutdown_moderation(private_cluster=True)
    check(records)


@pytest.mark.slow
def test_cola_stream_without_a_codec_library_exits_2_with_one_line(kafka_broker: Any, tiny_model_dir: Path,
                                                                   tmp_path: Path) -> None:
    """python-snappy made unimportable for every process of the job (a ``snappy`` module that raises ImportError,
    first on PYTHONPATH, as for an install without it): one line naming codec, topic and partition, exit code 2."""
    from tests.connectors.kafka.test_codecs import produce_compressed
    from tests.connectors.kafka_util import topics_config

    bootstrap = kafka_broker.bootstrap_servers
    topics = topics_config(bootstrap)
    produce_compressed(bootstrap, topics.input_topics[0], "snappy", 5)
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "snappy.py").write_text('raise ImportError("python-snappy is not installed")\n')
    config = tmp_path / "stream.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_model_dir), "device": "cpu"}, "taxonomy": {"labels": ["cat", "dog"]},
        "method": "clip", "detector": {"enabled": False}, "kafka": topics.model_dump(mode="json"),
        "ray": {"worker_num_cpus": 0.5, "num_cpus": 2}, "serve": {"min_replicas": 1, "max_replicas": 1}}))
    done = subprocess.run([sys.executable, "-m", "cola_moderation.pipeline.cli", "stream", "--config", str(config),
                           "--idle-timeout", "20"], capture_output=True, text=True, timeout=400, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path / 'blocked'}:{ROOT}"})
    assert done.returncode == 2, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("cola stream: cannot decompress snappy-compressed records of topic "
                           f"'{topics.input_topics[0]}' partition 0 at offset 0"), line
