"""The Ray Serve app end to end: a real private Ray cluster, Serve's HTTP proxy on a free 127.0.0.1 port, the tiny
model loaded inside the replica, and a real HTTP client (httpx). One deployment for the whole module."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from cola_moderation.connectors.records import FilePosition, HttpPosition, InputRecord, Route
from cola_moderation.pipeline.runtime.config import PipelineConfig, parse_config
from cola_moderation.pipeline.runtime.records import SCHEMA_VERSION
from cola_moderation.pipeline.runtime.worker import ModerationWorker

MAX_REQUEST_BYTES = 64 * 1024
RECORD_KEYS = {"schema_version", "id", "label", "score", "topk", "action", "adversarial_score",
               "suspected_adversarial", "method", "model", "policy_version", "source", "processed_at", "latency_ms",
               "metadata", "route", "review_reasons", "frame", "frame_count", "decided_by", "match"}


def png(seed: int, size: int = 40) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def config(tiny_model_dir: Path) -> PipelineConfig:
    return parse_config({
        "model": {"path": str(tiny_model_dir), "device": "cpu"},
        "taxonomy": {"labels": ["cat", "dog", "car"], "templates": ["a photo of a {}."], "top_k": 3},
        "method": "clip",
        "detector": {"enabled": False},  # the random tiny model's detector scores mean nothing
        "policy": {"version": "serve-test-1", "rules": {"car": {"review": 0.0}}},
        "ray": {"num_cpus": 2, "worker_num_cpus": 0.5},
        "serve": {"port": free_port(), "min_replicas": 1, "max_replicas": 1, "max_batch_size": 8,
                  "batch_wait_timeout_s": 0.05, "max_request_bytes": MAX_REQUEST_BYTES},
    })


@pytest.fixture(scope="module")
def server(config: PipelineConfig) -> Iterator[Any]:
    from cola_moderation.pipeline.jobs.serve_app import deploy_moderation, shutdown_moderation

    handle = deploy_moderation(config)
    try:
        yield handle
    finally:
        shutdown_moderation(private_cluster=True)


@pytest.fixture(scope="module")
def client(server: Any, config: PipelineConfig) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{config.serve.port}", timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def local(config: PipelineConfig) -> ModerationWorker:
    """The same worker in-process: what the replica must answer."""
    return ModerationWorker(config)


def expected(local: ModerationWorker, payload: bytes) -> dict[str, Any]:
    (routed,) = local.process([InputRecord("x", payload, {}, FilePosition("f", 0))]).routed
    return routed.record.to_json()


def assert_same_verdict(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["label"] == want["label"]
    assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    assert [t["label"] for t in got["topk"]] == [t["label"] for t in want["topk"]]


def test_raw_body_returns_the_output_record(client: httpx.Client, local: ModerationWorker) -> None:
    image = png(1)
    response = client.post("/v1/moderate", content=image,
                           headers={"content-type": "image/png", "x-request-id": "req-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == RECORD_KEYS
    assert body["schema_version"] == SCHEMA_VERSION and body["policy_version"] == "serve-test-1"
    assert body["id"] == "http:req-1" and body["source"] == {"request": "req-1"}
    assert body["metadata"] == {} and body["method"] == "clip" and body["latency_ms"] >= 0
    # the "car" rule reviews at any score and review is quarantined by default
    assert body["action"] == "review" and body["route"] == Route.QUARANTINE.value
    assert_same_verdict(body, expected(local, image))

    octet = client.post("/v1/moderate?id=upload-7", content=image,
                        headers={"content-type": "application/octet-stream"})
    assert octet.status_code == 200 and octet.json()["id"] == "upload-7"
    assert octet.json()["source"]["request"] != "req-1"  # a fresh server-made request id


def test_multipart_upload(client: httpx.Client, local: ModerationWorker) -> None:
    image = png(2)
    response = client.post("/v1/moderate", files={"image": ("cat.png", image, "image/png")},
                           data={"id": "m-1", "metadata": json.dumps({"uploader": "u1", "n": 3})})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "m-1" and body["metadata"] == {"uploader": "u1", "n": 3}
    assert_same_verdict(body, expected(local, image))


def test_json_upload_with_base64_and_data_url(client: httpx.Client, local: ModerationWorker) -> None:
    image = png(3)
    encoded = base64.b64encode(image).decode()
    response = client.post("/v1/moderate", json={"image_b64": encoded, "id": "j-1", "metadata": {"k": "v"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "j-1" and body["metadata"] == {"k": "v"}
    assert_same_verdict(body, expected(local, image))
    data_url = client.post("/v1/moderate", json={"image_b64": "data:image/png;base64," + encoded})
    assert data_url.status_code == 200 and data_url.json()["label"] == body["label"]


def test_concurrent_requests_are_batched_and_answered_in_order(client: httpx.Client,
                                                                local: ModerationWorker) -> None:
    """Requests grouped into one model batch (good and undecodable mixed) each get their own answer."""
    payloads = {f"c-{i}": (png(100 + i) if i % 4 else png(100 + i)[:60]) for i in range(12)}
    barrier = threading.Barrier(len(payloads))

    def send(item: tuple[str, bytes]) -> tuple[str, httpx.Response]:
        barrier.wait()
        return item[0], client.post(f"/v1/moderate?id={item[0]}", content=item[1],
                                    headers={"content-type": "image/png"})

    with ThreadPoolExecutor(len(payloads)) as pool:
        responses = dict(pool.map(send, payloads.items()))
    processed_at = []
    for key, response in responses.items():
        if int(key.split("-")[1]) % 4 == 0:  # truncated PNG
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "undecodable_image"
            assert "truncated" in response.json()["error"]["message"]
        else:
            assert response.status_code == 200, response.text
            assert response.json()["id"] == key
            assert_same_verdict(response.json(), expected(local, payloads[key]))
            assert 0 <= response.json()["latency_ms"] <= response.elapsed.total_seconds() * 1000
            processed_at.append(response.json()["processed_at"])
    # records of one model batch are stamped within the same millisecond: fewer stamps than answers = batching
    assert len(set(processed_at)) < len(processed_at) == 9


def multipart_body(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _chunks(total: int) -> Iterator[bytes]:
    for _ in range(total // 4096):
        yield b"\x89PNG" * 1024


MULTIPART = "multipart/form-data; boundary=xyz"
BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str, str]] = [
    # (case, httpx.post kwargs, status, error code, text in the message)
    ("empty raw body", {"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty_body", "empty"),
    ("not an image", {"content": b"hello, not an image", "headers": {"content-type": "image/jpeg"}}, 422,
     "undecodable_image", "unrecognised image format"),
    ("truncated png", {"content": png(5)[:80], "headers": {"content-type": "image/png"}}, 422,
     "undecodable_image", "truncated"),
    ("bad base64", {"json": {"image_b64": "not*base64!"}}, 400, "bad_base64", "image_b64"),
    ("base64 of nothing", {"json": {"image_b64": ""}}, 400, "empty_body", "image_b64"),
    ("base64 of garbage", {"json": {"image_b64": base64.b64encode(b"garbage").decode()}}, 422,
     "undecodable_image", "unrecognised image format"),
    ("json not json", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "bad_json",
     "not valid JSON"),
    ("json not an object", {"json": [1, 2]}, 400, "bad_json", "must be an object"),
    ("json without image", {"json": {"id": "x"}}, 400, "missing_image", "'image_b64' is missing"),
    ("json unknown field", {"json": {"image_b64": "AAAA", "imag": 1}}, 400, "unknown_field", "imag"),
    ("json bad metadata", {"json": {"image_b64": base64.b64encode(png(6)).decode(), "metadata": [1]}}, 400,
     "bad_metadata", "metadata"),
    ("json bad id", {"json": {"image_b64": base64.b64encode(png(6)).decode(), "id": 5}}, 400, "bad_id", "'id'"),
    ("unsupported type", {"content": b"hi", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type", "text/plain"),
    ("too large (Content-Length)", {"content": b"\x89PNG" * (MAX_REQUEST_BYTES // 2),
                                    "headers": {"content-type": "image/png"}}, 413, "request_too_large",
     "serve.max_request_bytes"),
    ("too large (chunked)", {"content": _chunks(MAX_REQUEST_BYTES * 2), "headers": {"content-type": "image/png"}},
     413, "request_too_large", "serve.max_request_bytes"),
    ("multipart without boundary", {"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400,
     "bad_multipart", "boundary"),
    ("multipart garbage", {"content": b"garbage", "headers": {"content-type": MULTIPART}}, 400, "bad_multipart",
     "multipart"),
    ("multipart without image", {"content": multipart_body("xyz", [("id", None, b"a")]),
                                 "headers": {"content-type": MULTIPART}}, 400, "missing_image", "no 'image' part"),
    ("multipart image as text", {"content": multipart_body("xyz", [("image", None, b"abc")]),
                                 "headers": {"content-type": MULTIPART}}, 400, "missing_image", "file part"),
    ("multipart empty image", {"content": multipart_body("xyz", [("image", "a.png", b"")]),
                               "headers": {"content-type": MULTIPART}}, 400, "empty_body", "empty"),
    ("multipart bad metadata", {"content": multipart_body("xyz", [("image", "a.png", png(7)),
                                                                  ("metadata", None, b"{")]),
                                "headers": {"content-type": MULTIPART}}, 400, "bad_json", "metadata"),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "code", "message"), BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_specific_4xx_and_the_server_keeps_serving(
        client: httpx.Client, case: str, kwargs: dict[str, Any], status: int, code: str, message: str) -> None:
    response = client.post("/v1/moderate", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["code"] == code
    assert message in error["message"], error["message"]
    good = client.post("/v1/moderate", content=png(8), headers={"content-type": "image/png"})
    assert good.status_code == 200, good.text


def test_unknown_route_and_method_are_4xx(client: httpx.Client) -> None:
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/moderate").status_code == 405


def test_labels_and_health(client: httpx.Client, config: PipelineConfig) -> None:
    labels = client.get("/v1/labels")
    assert labels.status_code == 200
    assert labels.json() == {"labels": ["cat", "dog", "car"], "model": config.model.path, "method": "clip",
                             "policy_version": "serve-test-1"}
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["model"] == config.model.path
    assert health.json()["replica"]


def test_handle_processes_whole_batches(server: Any, local: ModerationWorker) -> None:
    """The stream job's entry point: a batch of records in, a WorkerResult with every record once out."""
    from cola_moderation.pipeline.jobs.serve_app import moderation_handle

    records = [InputRecord(f"k-{i}", png(200 + i) if i != 2 else b"", {"i": i}, HttpPosition(f"r{i}"))
               for i in range(5)]
    result = moderation_handle().process_records.remote(records, 123.0).result(timeout_s=60)
    assert len(result) == 5
    assert [d.record.id for d in result.dead_letters] == ["k-2"]
    assert "empty" in result.dead_letters[0].error_message
    assert [o.record.id for o in result.outcomes] == \
        [r.id for r in records]  # one outcome per input, in input order
    routed = {o.record.id: o.record.to_json() for o in result.routed}
    assert sorted(routed) == ["k-0", "k-1", "k-3", "k-4"]
    assert routed["k-3"]["metadata"] == {"i": 3} and routed["k-3"]["source"] == {"request": "r3"}
    assert routed["k-0"]["latency_ms"] > 1e6  # measured from the given received_at (epoch second 123)
    assert_same_verdict(routed["k-4"], expected(local, records[4].payload))
