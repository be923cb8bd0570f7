"""Reliability (red team) of the HTTP API on a real Serve deployment: slow bodies cannot lock others out, malformed
requests of every kind get a 4xx (never a 5xx), and good requests are still answered afterwards."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from cola_moderation.pipeline.runtime.config import PipelineConfig, parse_config

MAX_REQUEST_BYTES = 256 * 1024


def png(seed: int, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def config(tiny_model_dir: Path) -> PipelineConfig:
    return parse_config({
        "model": {"path": str(tiny_model_dir), "device": "cpu"},
        "taxonomy": {"labels": ["cat", "dog", "car"]},
        "method": "clip", "detector": {"enabled": False},
        "ray": {"num_cpus": 2, "worker_num_cpus": 0.5},
        "serve": {"port": free_port(), "min_replicas": 1, "max_replicas": 1, "max_request_bytes": MAX_REQUEST_BYTES,
                  "max_ongoing_requests": 16, "max_slow_bodies": 4, "body_timeout_s": 3, "body_grace_s": 0.5},
    })


@pytest.fixture(scope="module")
def base_url(config: PipelineConfig) -> Iterator[str]:
    import ray

    from cola_moderation.pipeline.jobs.serve_app import deploy_moderation, shutdown_moderation

    # the proxy's body guard (pipeline/jobs/http_guard.py) reads its limits from the environment of the Ray processes;
    # a cluster left running by an earlier test would keep its proxy's environment: start a fresh private one
    if ray.is_initialized():
        shutdown_moderation(private_cluster=True)
    limits = {"COLA_PROXY_BODY_TIMEOUT_S": "3", "COLA_PROXY_MAX_SLOW_BODIES": "16"}
    saved = {key: os.environ.get(key) for key in limits}
    os.environ.update(limits)
    deploy_moderation(config)
    try:
        yield f"http://127.0.0.1:{config.serve.port}"
    finally:
        shutdown_moderation(private_cluster=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def raw_request(port: int, data: bytes, *, timeout: float = 15.0) -> int | None:
    """Send raw bytes and return the response's status code (None: closed without a response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        response = b""
        try:
            while b"\r\n" not in response and (chunk := sock.recv(4096)):
                response += chunk
        except OSError:
            pass
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


def request_bytes(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"", *,
                  content_length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if content_length is not None or body:
        lines.append(b"Content-Length: " + str(len(body) if content_length is None else content_length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def good_request(client: httpx.Client, seed: int) -> httpx.Response:
    return client.post("/v1/moderate", content=png(seed), headers={"content-type": "image/png"})


class SlowClients:
    """``count`` connections that send headers announcing a body and then trickle it one byte every 0.5 s; a closed
    one is reopened, so ``count`` stay open. Records the status codes the server answered them with."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.statuses: list[int | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(request_bytes("POST", "/v1/moderate", [(b"Content-Type", b"image/png")], b"",
                                   content_length=100_000) + b"\x89PNG")
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        sockets = [self._open() for _ in range(self.count)]
        while not self._stop.wait(0.5):
            for index, sock in enumerate(sockets):
                try:
                    answer = sock.recv(4096)
                except BlockingIOError:
                    answer = None
                except OSError:
                    answer = b""
                if answer is not None:  # answered or closed: record and reopen
                    self.statuses.append(int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None)
                    sock.close()
                    sockets[index] = self._open()
                    continue
                with contextlib.suppress(OSError):
                    sock.send(b"\x00")
        for sock in sockets:
            sock.close()

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_slow_bodies_do_not_lock_out_other_requests(base_url: str, config: PipelineConfig) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        assert good_request(client, 0).status_code == 200  # warm
    answered = []
    with SlowClients(config.serve.port, 100) as slow, httpx.Client(base_url=base_url, timeout=5.0) as client:
        time.sleep(1.0)  # the 100 connections are open and trickling
        for round_ in range(6):
            started = time.monotonic()
            health = client.get("/healthz")  # httpx.ReadTimeout after 5 s fails the test
            good = good_request(client, round_)
            answered.append((health.status_code, good.status_code, time.monotonic() - started))
            time.sleep(0.5)
    assert [(h, g) for h, g, _ in answered] == [(200, 200)] * 6, answered
    # the slow clients got 408 (deadline) or 429 (over the slow-body cap), never a 5xx
    assert slow.statuses and set(slow.statuses) <= {408, 429}, sorted(set(map(str, slow.statuses)))
    print(f"slow-body round trips (health + good): max {max(s for *_, s in answered):.2f} s; "
          f"slow clients answered {len(slow.statuses)} times: {sorted(set(map(str, slow.statuses)))}")


def malformed_requests() -> list[tuple[str, bytes]]:
    """(name, raw request bytes): >= 100 malformed or hostile requests."""
    image = png(1)
    b64 = base64.b64encode(image).decode()
    cases: list[tuple[str, bytes]] = []

    def post(name: str, body: bytes, content_type: bytes | None = b"application/json",
             extra: list[tuple[bytes, bytes]] | None = None, **kwargs: Any) -> None:
        headers = ([(b"Content-Type", content_type)] if content_type is not None else []) + (extra or [])
        cases.append((name, request_bytes("POST", "/v1/moderate", headers, body, **kwargs)))

    for i, text in enumerate(["{", "}", "[", "null", "true", "1", '"x"', "[]", "{}", '{"image_b64": 1}',
                              '{"image_b64": null}', '{"image_b64": ""}', '{"image_b64": "!!!"}', '{"image_b64": "a"}',
                              f'{{"image_b64": "{b64}", "id": 5}}', f'{{"image_b64": "{b64}", "id": ""}}',
                              f'{{"image_b64": "{b64}", "id": "{"x" * 2000}"}}',
                              f'{{"image_b64": "{b64}", "metadata": []}}', f'{{"image_b64": "{b64}", "x": 1}}',
                              f'{{"image_b64": "{b64}", "metadata": {{"a": NaN}}}}',
                              f'{{"image_b64": "{b64}", "metadata": {{"a": Infinity}}}}',
                              f'{{"image_b64": "{b64}", "metadata": {{"a": -Infinity}}}}',
                              f'{{"image_b64": "{b64}", "metadata": {{"a": 1e999}}}}',
                              '{"image_b64": "' + base64.b64encode(b"not an image").decode() + '"}',
                              "\ufeff{}", '{"a":1,"a":2}', "{'a': 1}", '{"image_b64": "x"' + " " * 1000]):
        post(f"json-{i}", text.encode())
    for depth in (17, 50, 1000, 100_000):
        post(f"deep-array-{depth}", b"[" * depth + b"]" * depth)
        post(f"deep-metadata-{depth}", f'{{"image_b64": "{b64}", "metadata": {{"a": '.encode() + b"[" * depth
             + b"]" * depth + b"}}")
    for i, raw in enumerate([b"\xff\xfe\x00", b"\xc3\x28", b'{"image_b64": "\xff"}', bytes(range(256))]):
        post(f"non-utf8-json-{i}", raw)
    for i, ctype in enumerate([b"text/plain", b"application/xml", b"", b"multipart/mixed", b"image",
                               b"application/json; charset=\xff", b"\xff\xfe", b"a" * 5000, b"image/png;;;;",
                               b"application/x-www-form-urlencoded"]):
        post(f"content-type-{i}", image, ctype)
    boundary = b"xyzBOUNDARY"
    part = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--" + boundary + b"--\r\n")
    multipart = b"multipart/form-data; boundary=" + boundary
    for cut in (1, 10, 40, 80, len(part) // 2, len(part) - 3):
        post(f"multipart-truncated-{cut}", part[:cut], multipart)
    for i, ctype in enumerate([b"multipart/form-data", b"multipart/form-data; boundary=",
                               b"multipart/form-data; boundary=" + b"b" * 2000, b"multipart/form-data; boundary=\xff"]):
        post(f"multipart-boundary-{i}", part, ctype)
    meta = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{"a": NaN}\r\n')
    post("multipart-nan-metadata", meta + part, multipart)
    deep = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n' + b"[" * 5000 + b"\r\n"
    post("multipart-deep-metadata", deep + part, multipart)
    post("multipart-bad-disposition", part.replace(b"form-data;", b"\xff\xfe;"), multipart)
    post("multipart-many-parts", (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n')
         * 200 + part, multipart)
    for i, value in enumerate([b"\xff\xfe\xfd", b"\xc3\x28", b"a" * 4000, b"\x00", b"../../etc", b"\x1b[31m"]):
        post(f"x-request-id-{i}", image, b"image/png", [(b"X-Request-ID", value)])
    for i, (name, value) in enumerate([(b"x-request-timeout-seconds", b"\xff"), (b"x-request-timeout-seconds", b"-1"),
                                       (b"serve_multiplexed_model_id", b"\xff"), (b"x-session-id", b"\xfe"),
                                       (b"traceparent", b"\xff"), (b"X-Custom", b"\xff" * 100),
                                       (b"X-Big", b"a" * 12_000), (b"x-request-disconnect-disabled", b"\xff")]):
        post(f"header-{i}", image, b"image/png", [(name, value)])
    post("many-headers", image, b"image/png", [(f"X-H{i}".encode(), b"v") for i in range(300)])
    post("huge-header", image, b"image/png", [(b"X-Huge", b"a" * 100_000)])
    for i, length in enumerate([b"-1", b"abc", b"1e3", b"99999999999999999999", b" 5"]):
        cases.append((f"content-length-{i}", b"POST /v1/moderate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Content-Type: image/png\r\nContent-Length: " + length + b"\r\n\r\n" + image))
    post("content-length-over-limit", b"x", b"image/png", content_length=MAX_REQUEST_BYTES + 1)
    post("body-over-limit", b"\x89PNG" + b"\x00" * (MAX_REQUEST_BYTES + 10), b"image/png")
    post("empty-body", b"", b"image/png", content_length=0)
    post("random-bytes", bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), b"image/png")
    post("png-header-only", image[:33], b"image/png")
    post("query-id", image, b"image/png")
    cases.append(("query-empty-id", request_bytes("POST", "/v1/moderate?id=", [(b"Content-Type", b"image/png")],
                                                  image)))
    cases.append(("query-bad-escape", request_bytes("POST", "/v1/moderate?id=%ff%fe",
                                                    [(b"Content-Type", b"image/png")], image)))
    cases.append(("chunked-garbage", b"POST /v1/moderate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"))
    cases.append(("chunked-and-length", b"POST /v1/moderate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Content-Type: image/png\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n"
                  b"0\r\n\r\n"))
    for i, line in enumerate([b"GET /healthz HTTP/9.9", b"POST /v1/moderate\xff HTTP/1.1",
                              b"BREW /v1/moderate HTTP/1.1", b"GET /" + b"a" * 20_000 + b" HTTP/1.1",
                              b"\x16\x03\x01\x02\x00", b"GET /v1/labels?x=%%"]):
        cases.append((f"request-line-{i}", line + b"\r\nHost: x\r\nConnection: close\r\n\r\n"))
    cases.append(("truncated-body", request_bytes("POST", "/v1/moderate", [(b"Content-Type", b"image/png")],
                                                  image[:100], content_length=len(image))))
    for name, body in hostile_images().items():  # animated and phone formats: 4xx or 200, never 5xx
        post(f"image-{name}", body, b"image/octet-stream")
    return cases


def hostile_images() -> dict[str, bytes]:
    """Animated and phone-format inputs: many frames, frames cut mid-file, truncated and header-only HEIC / AVIF,
    and files declaring far more pixels than they hold."""
    from cola_moderation.operators.decode import register_heif

    register_heif()

    def save(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        return buffer.getvalue()

    frames = [Image.new("RGB", (8, 8), (i % 256, 0, 0)) for i in range(3000)]
    many = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    two = save(frames[0], "GIF", save_all=True, append_images=[Image.new("RGB", (8, 8), (0, 0, 255))],
               duration=[20, 4000])
    big = Image.new("RGB", (3000, 3000), (1, 2, 3))
    images = {"gif-3000-frames": many, "gif-cut-in-frame-2": two[: len(two) - 12],
              "webp-animated-cut": save(frames[0], "WEBP", save_all=True, append_images=frames[1:20])[:-40],
              "apng-cut": save(frames[0], "PNG", save_all=True, append_images=frames[1:5])[:-30]}
    for fmt in ("HEIF", "AVIF"):
        photo = save(Image.effect_noise((64, 64), 50).convert("RGB"), fmt)
        images[f"{fmt.lower()}-half"] = photo[: len(photo) // 2]
        images[f"{fmt.lower()}-header"] = photo[:40]
        images[f"{fmt.lower()}-9mp-bomb"] = save(big, fmt)
    return images


def test_http_fuzz_no_5xx_and_good_requests_still_answered(base_url: str, config: PipelineConfig) -> None:
    cases = malformed_requests()
    assert len(cases) >= 100
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda case: raw_request(config.serve.port, case[1]), cases))
    by_name = dict(zip((name for name, _ in cases), statuses, strict=True))
    server_errors = {name: status for name, status in by_name.items() if status is not None and status >= 500}
    assert not server_errors, server_errors
    # NaN / Infinity / overflowing numbers in metadata: refused up front (not a 500 after inference)
    assert [by_name[f"json-{i}"] for i in (19, 20, 21, 22)] == [400] * 4 and by_name["multipart-nan-metadata"] == 400
    assert by_name["deep-array-100000"] == 400 and by_name["deep-metadata-1000"] == 400
    assert by_name["x-request-id-0"] == 200 and by_name["header-0"] == 200 and by_name["header-2"] == 200
    assert by_name["truncated-body"] == 408
    counts: dict[str, int] = {}
    for status in statuses:
        counts[str(status)] = counts.get(str(status), 0) + 1
    print(f"fuzz: {len(cases)} requests, statuses {dict(sorted(counts.items()))}")
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for seed in range(3):
            response = good_request(client, seed)
            assert response.status_code == 200 and json.loads(response.content)["label"] in ("cat", "dog", "car")
        assert client.get("/healthz").status_code == 200
