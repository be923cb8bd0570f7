"""Hash matching in the three jobs: a bank built with ``cola hash`` from 50 test images matches them, their JPEG q75
re-encodes and their 8/255 PGD copies (>= 95% each) and none of 1,000 other test images, with the bank's action and
``match`` in the record, in ``cola batch``, the stream job (embedded broker) and ``POST /v1/moderate``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from cola_moderation.pipeline.runtime.config import PipelineConfig, parse_config
from cola_moderation.resources import config_path
from tests.connectors.kafka_util import produce, read_topic, topics_config
from tests.operators.matching.known_images import (
    REPO,
    KnownImages,
    known_images,
    reference_config,
    write_bank_with_cola_hash,
)

GROUPS = ("banked", "jpeg75", "pgd8", "other")


@pytest.fixture(scope="module")
def images() -> KnownImages:
    return known_images()


@pytest.fixture(scope="module")
def bank(images: KnownImages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bank_with_cola_hash(images.banked, tmp_path_factory.mktemp("bank"))


def inputs(images: KnownImages) -> list[tuple[str, bytes]]:
    return [(f"{group}-{i}", data) for group, payloads in zip(GROUPS, (images.banked, images.jpeg75, images.pgd8,
                                                                       images.others), strict=True)
            for i, data in enumerate(payloads)]


def check_records(records: Iterable[dict[str, Any]], images: KnownImages) -> None:
    by_group: dict[str, list[dict[str, Any]]] = {group: [] for group in GROUPS}
    for record in records:
        by_group[record["id"].split("-")[0]].append(record)
    assert [len(by_group[g]) for g in GROUPS] == [50, 50, 50, len(images.others)]  # every input exactly once
    for group in GROUPS[:3]:
        matched = [r for r in by_group[group] if r["match"] is not None]
        assert len(matched) >= 0.95 * 50, (group, len(matched))
        assert {r["action"] for r in matched} == {"block"} and {r["decided_by"] for r in matched} == {"match"}
        assert {r["match"]["bank"] for r in matched} == {"known"}
        assert all(r["match"]["distance"] <= 31 for r in matched)
    assert [r["id"] for r in by_group["other"] if r["match"] is not None] == []
    assert {r["decided_by"] for r in by_group["other"]} == {"model"}


def config_dict(bank: Path, **overrides: Any) -> dict[str, Any]:
    return reference_config(bank, **{"ray": {"num_cpus": 2, "worker_num_cpus": 0.5}, **overrides})


def parsed(data: dict[str, Any]) -> PipelineConfig:
    return parse_config(data, base_dir=config_path("reference").parent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_batch_command(bank: Path, images: KnownImages, tmp_path: Path) -> None:
    rows = inputs(images)
    pq.write_table(pa.table({"id": [i for i, _ in rows], "image": [d for _, d in rows]}), tmp_path / "in.parquet")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(config_dict(bank, model={"path": "builtin:reference", "device": "cpu",
                                                          "batch_size": 64})))
    command = [sys.executable, "-m", "cola_moderation.pipeline.cli", "batch", "--config", str(config),
               "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"), "--json"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    table = ds.dataset(tmp_path / "out", format="parquet", partitioning="hive").to_table()
    records = [r for r in table.to_pylist() if r["route"] != "dead_letter"]
    check_records(records, images)


@pytest.mark.slow
def test_stream_job(kafka_broker: Any, bank: Path, images: KnownImages) -> None:
    from cola_moderation.pipeline.jobs.stream import run_stream_job

    bootstrap = kafka_broker.bootstrap_servers
    topics = topics_config(bootstrap, value_format="raw", max_request_size=4 * 1024 * 1024)
    config = parsed(config_dict(bank, kafka={**topics.model_dump(), "max_batch_records": 64},
                                serve={"min_replicas": 1, "max_replicas": 1},
                                stream={"consumers": 1, "consumer_num_cpus": 0.25}))
    rows = inputs(images)
    produce(bootstrap, topics.input_topics[0], [(key.encode(), data, []) for key, data in rows])
    summary = run_stream_job(config, idle_timeout_s=5.0, stop_event=threading.Event())
    assert summary.inputs == len(rows)
    messages = [m for route, topic in (("output", topics.output_topic), ("quarantine", topics.quarantine_topic))
                for m in read_topic(bootstrap, topic, expect=summary.routes[route], idle_s=0.5)]
    check_records((json.loads(m.value) for m in messages), images)


@pytest.mark.slow
def test_http_moderate(bank: Path, images: KnownImages) -> None:
    import httpx

    from cola_moderation.pipeline.jobs.serve_app import deploy_moderation, shutdown_moderation

    port = free_port()
    config = parsed(config_dict(bank, serve={"port": port, "min_replicas": 1, "max_replicas": 1,
                                             "max_batch_size": 16, "batch_wait_timeout_s": 0.02}))
    deploy_moderation(config)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            def send(item: tuple[str, bytes]) -> dict[str, Any]:
                response = client.post(f"/v1/moderate?id={item[0]}", content=item[1],
                                       headers={"content-type": "application/octet-stream"})
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                return body

            with ThreadPoolExecutor(8) as pool:
                bodies = list(pool.map(send, inputs(images)))
    finally:
        shutdown_moderation(private_cluster=True)
    check_records(bodies, images)
