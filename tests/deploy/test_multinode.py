"""Multi-node on one machine: a Ray head and a worker node (``ray start``, 127.0.0.1 only) where only the worker node
carries the custom resource ``model_node`` that the model workers require. ``cola batch`` and a bounded
``cola stream`` run as separate driver processes joining the cluster with ``--address``; the tests check every
input's route and that the model actors (Ray Data pool actors, Serve replicas) ran on the worker node, and that
the worker node's own metrics endpoint exported the workers' metrics.

Nothing here may assume one process or one node: the driver, the head and the worker node are separate process
trees sharing only what a real cluster shares (the config file, the model directory and input paths given as
absolute paths, the broker address).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from cola_moderation.connectors.local.kafka_tools import Message
from tests.connectors.kafka_util import produce, read_topic, topics_config
from tests.deploy.local_cluster import LocalRayCluster

pytestmark = pytest.mark.slow

COLA = [sys.executable, "-m", "cola_moderation.pipeline.cli"]
KUBERAY = Path(__file__).resolve().parents[2] / "deploy" / "kuberay"
MODEL_RESOURCE = "model_node"


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    if not sys.platform.startswith("linux"):
        pytest.skip("the local multi-node cluster helper reads /proc")
    # metrics reach the node's Prometheus endpoint within ~1 s instead of the default 10 s
    with LocalRayCluster(dashboard=True, env={"RAY_metrics_report_interval_ms": "1000"}) as local:
        local.add_worker(cpus=1, resources={MODEL_RESOURCE: 1})
        yield local


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A pipeline config whose model workers need ``model_node`` (only the worker node has it) and fit in the
    2-CPU cluster next to the read/decode tasks and the stream consumers."""
    path = tmp_path_factory.mktemp("multinode") / "config.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_model_dir), "device": "cpu", "batch_size": 8},
        "taxonomy": {"labels": ["cat", "dog", "car"], "templates": ["a photo of a {}."]},
        "method": "clip",
        "detector": {"enabled": False},
        "policy": {"rules": {"car": {"review": 0.0}}},
        "parquet": {"batch_rows": 10},
        "ray": {"worker_resources": {MODEL_RESOURCE: 1}, "worker_num_cpus": 0.5, "decode_num_cpus": 0.25,
                "actor_pool_min": 1, "actor_pool_max": 1},
        "serve": {"min_replicas": 1, "max_replicas": 1},
        "stream": {"consumers": 1, "consumer_num_cpus": 0.25},
    }))
    return path


def cola(cluster: LocalRayCluster, *args: str, timeout_s: float = 300) -> dict[str, Any]:
    """Run ``cola ARGS --address <cluster> --json`` as its own driver process; returns the JSON summary."""
    done = subprocess.run([*COLA, *args, "--address", cluster.address, "--json"], env=cluster.env,
                          capture_output=True, text=True, timeout=timeout_s, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0:
        raise AssertionError(f"cola {args[0]} exited {done.returncode}:\n{done.stderr[-4000:]}\n{cluster.logs()}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def node_ids(cluster: LocalRayCluster) -> tuple[str, str]:
    """(head node id, model node id)."""
    nodes = cluster.alive_nodes()
    model = [str(n["NodeID"]) for n in nodes if MODEL_RESOURCE in n["Resources"]]  # type: ignore[operator]
    other = [str(n["NodeID"]) for n in nodes if MODEL_RESOURCE not in n["Resources"]]  # type: ignore[operator]
    assert len(model) == 1 and len(other) == 1, nodes
    return other[0], model[0]


def actors_named(cluster: LocalRayCluster, fragment: str) -> list[Any]:
    """Every actor (alive or dead) whose class name contains ``fragment``, from the head's state API."""
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.dashboard_url, detail=True, limit=10_000, raise_on_missing_output=False)
    return [actor for actor in actors if fragment in actor.class_name]


def scrape(port: int, metric: str, timeout_s: float = 20.0) -> list[str]:
    """Lines of ``metric`` on a node's Prometheus endpoint, polled until present or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        lines = [line for line in text.splitlines() if line.startswith(metric)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(1)


def counter_total(lines: list[str], **tags: str) -> float:
    """Sum of the samples in Prometheus ``lines`` whose labels include ``tags``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if all(f'{key}="{value}"' in line for key, value in tags.items()))


def test_batch_job_places_model_actors_on_the_model_node(cluster: LocalRayCluster, config_file: Path,
                                                         tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    rows = [{"id": f"img-{i:02d}", "image": png(i) if i % 9 else b"corrupt", "tenant": "t1"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), inputs / "part-0.parquet")
    output = tmp_path / "out"

    summary = cola(cluster, "batch", "--config", str(config_file), "--input", str(inputs), "--output", str(output))

    assert summary["inputs"] == 30
    table = ds.dataset(output, partitioning="hive").to_table()  # one dataset, the route as a column
    assert sorted(table.column("id").to_pylist()) == [f"img-{i:02d}" for i in range(30)]  # every input exactly once
    dead = table.filter(pc.equal(table.column("route"), "dead_letter")).to_pylist()
    assert sorted(d["id"] for d in dead) == [f"img-{i:02d}" for i in range(0, 30, 9)]

    _, model_node = node_ids(cluster)
    actors = actors_named(cluster, "ModelStage")
    assert actors, "no Ray Data model actor was recorded"
    assert {a.node_id for a in actors} == {model_node}, [(a.class_name, a.node_id) for a in actors]

    # the model actors' metrics are exported by the model node's own metrics agent
    # (decode failures are counted too: they reach the worker and become dead letters there)
    assert counter_total(scrape(cluster.metrics_ports[1], "ray_cola_records_in"), job="batch") == 30
    assert counter_total(scrape(cluster.metrics_ports[0], "ray_cola_records_in", timeout_s=0), job="batch") == 0


def test_bounded_stream_job_uses_serve_replicas_on_the_model_node(cluster: LocalRayCluster, config_file: Path,
                                                                 kafka_broker: Any) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topics = topics_config(bootstrap, partitions=2)
    config = yaml.safe_load(config_file.read_text())
    config["kafka"] = {**topics.model_dump(mode="json", exclude={"bootstrap_servers"}), "max_batch_records": 8}
    stream_config = config_file.with_name("stream.yaml")
    stream_config.write_text(yaml.safe_dump(config))
    count = 40
    messages: list[Message] = [(f"m{i:02d}".encode(), png(100 + i) if i % 10 else b"not an image", [])
                               for i in range(count)]
    produce(bootstrap, topics.input_topics[0], messages)

    summary = cola(cluster, "stream", "--config", str(stream_config), "--bootstrap", bootstrap,
                   "--max-records", str(count), "--idle-timeout", "30")

    assert summary["inputs"] == count
    routes = summary["routes"]
    outputs = read_topic(bootstrap, topics.output_topic, expect=routes.get("output", 0), idle_s=0.5)
    quarantined = read_topic(bootstrap, topics.quarantine_topic, expect=routes.get("quarantine", 0), idle_s=0.5)
    dead = read_topic(bootstrap, topics.dead_letter_topic, expect=count // 10, idle_s=0.5)
    keys = sorted(m.key.decode() for m in outputs + quarantined + dead)
    assert keys == [f"m{i:02d}" for i in range(count)]  # output + dead-letter = input, no duplicates
    assert sorted(m.key.decode() for m in dead) == [f"m{i:02d}" for i in range(0, count, 10)]

    _, model_node = node_ids(cluster)
    replicas = actors_named(cluster, "ServeReplica:cola-moderation")
    assert replicas, "no Serve replica was recorded"
    assert {a.node_id for a in replicas} == {model_node}, [(a.class_name, a.node_id) for a in replicas]
    # the job deleted only its own Serve application: the shared cluster is still up with both nodes
    assert len(cluster.alive_nodes()) == 2
    assert os.environ.get("RAY_ADDRESS") != cluster.address  # the test process never joined the cluster


def test_rayservice_serve_config_deploys_on_the_cluster(cluster: LocalRayCluster, config_file: Path) -> None:
    """The RayService's serveConfigV2, submitted to the head's dashboard as KubeRay does (PUT
    /api/serve/applications/), with only what differs on one machine changed: HTTP on 127.0.0.1:free port, one proxy
    (two proxies on one machine would want the same port) and this test's config file."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from cola_moderation.connectors.local.broker import free_port

    service = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    port = free_port()
    serve_config["http_options"] = {**serve_config["http_options"], "host": "127.0.0.1", "port": port}
    serve_config["proxy_location"] = "HeadOnly"
    (app,) = serve_config["applications"]
    app["args"] = {**app["args"], "config": str(config_file)}
    client = ServeSubmissionClient(cluster.dashboard_url)
    # as on the RayService's own cluster, Serve starts fresh: the stream job above left a Serve instance without an
    # HTTP proxy, and a running Serve instance keeps its first http_options
    client.delete_applications()
    client.deploy_applications(serve_config)
    try:
        deadline = time.monotonic() + 180
        status = ""
        while time.monotonic() < deadline:
            details = client.get_serve_details()["applications"].get(app["name"], {})
            status = details.get("status", "")
            if status in {"RUNNING", "DEPLOY_FAILED"}:
                break
            time.sleep(1)
        assert status == "RUNNING", details

        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
        request = urllib.request.Request(f"{base}/v1/moderate?id=upload-1", data=png(7), method="POST",
                                         headers={"content-type": "image/png"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        assert body["id"] == "upload-1" and body["label"] in {"cat", "dog", "car"}

        _, model_node = node_ids(cluster)
        replicas = [a for a in actors_named(cluster, "ServeReplica:cola-moderation") if a.state == "ALIVE"]
        assert replicas and {a.node_id for a in replicas} == {model_node}
    finally:
        client.delete_applications()
