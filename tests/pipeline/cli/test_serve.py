"""``cola serve`` as a user runs it: a subprocess on a free port, a real HTTP request, SIGTERM, a clean exit."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, model_dir: Path, **ray: object) -> Path:
    ray_yaml = ", ".join(f"{key}: {value}" for key, value in {"num_cpus": 2, "worker_num_cpus": 0.5, **ray}.items())
    path.write_text(f"model: {{path: {model_dir}, device: cpu}}\n"
                    "taxonomy: {labels: [cat, dog, car], templates: ['a photo of a {}.']}\n"
                    "method: clip\ndetector: {enabled: false}\n"
                    f"ray: {{{ray_yaml}}}\n"
                    "serve: {min_replicas: 1, max_replicas: 1}\n")
    return path


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def wait_healthy(url: str, process: subprocess.Popen[str], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"cola serve exited early ({process.returncode}): {process.communicate()[1][-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail("cola serve did not become healthy in time")


def test_cola_serve_answers_then_stops_cleanly_on_sigterm(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "serve.yaml", tiny_model_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "cola_moderation.pipeline.cli", "serve", "--config", str(config),
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(url, process)
        response = httpx.post(f"{url}/v1/moderate?id=cli-1", content=png(), headers={"content-type": "image/png"},
                              timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "cli-1" and response.json()["label"] in {"cat", "dog", "car"}
        assert httpx.get(f"{url}/v1/labels", timeout=10).json()["labels"] == ["cat", "dog", "car"]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    assert "cola serve: stopping" in stderr and "Traceback" not in stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2)


@pytest.mark.parametrize(("case", "expected"), [
    ("gpu", "ray.worker_num_gpus=1"),  # refused up front, before anything is scheduled
    ("model", "cannot load model"),  # checked before Ray starts (pipeline/jobs/preflight.py)
])
def test_cola_serve_start_failures_exit_2_naming_the_cause(tiny_model_dir: Path, tmp_path: Path, case: str,
                                                          expected: str) -> None:
    if case == "gpu":
        config = write_config(tmp_path / "gpu.yaml", tiny_model_dir, worker_num_gpus=1)
    else:
        config = write_config(tmp_path / "model.yaml", tmp_path / "no-such-model")
    result = subprocess.run([sys.executable, "-m", "cola_moderation.pipeline.cli", "serve", "--config", str(config),
                             "--port", str(free_port())], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    summary = [line for line in result.stderr.splitlines() if line.startswith("cola serve: ")]
    assert summary and expected in summary[-1], result.stderr[-3000:]
