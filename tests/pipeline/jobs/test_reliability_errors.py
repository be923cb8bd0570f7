"""Reliability (red team): operator mistakes are one line on stderr, exit code 2, within seconds, no traceback.

Each case runs the real ``cola`` CLI in a subprocess (in parallel: they are independent)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cola_moderation.pipeline.jobs.preflight import check_output_directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, model: Path, *, bootstrap: str = "127.0.0.1:9092") -> Path:
    path.write_text(f"model: {{path: {model}, device: cpu}}\n"
                    "taxonomy: {labels: [cat, dog, car]}\nmethod: clip\ndetector: {enabled: false}\n"
                    "ray: {num_cpus: 2, worker_num_cpus: 0.5}\nserve: {min_replicas: 1, max_replicas: 1}\n"
                    f"kafka: {{bootstrap_servers: '{bootstrap}'}}\n")
    return path


def cola(*args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cola_moderation.pipeline.cli", *args], capture_output=True,
                            text=True, timeout=120)
    return result.returncode, result.stderr, time.monotonic() - started


def test_operator_mistakes_are_one_line_exit_2(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    good = write_config(tmp_path / "good.yaml", tiny_model_dir, bootstrap=f"127.0.0.1:{port}")
    missing_model = write_config(tmp_path / "missing-model.yaml", tmp_path / "no-such-model")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(good.read_bytes() + b"# caf\xe9\n")
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"image": [b"x"]}), data)
    (tmp_path / "a-file").write_text("x")
    cases = {
        "no broker": (["stream", "--config", str(good), "--idle-timeout", "1"],
                      f"cannot reach the Kafka broker at 127.0.0.1:{port}"),
        "read-only output": (["batch", "--config", str(good), "--input", str(data), "--output", "/sys/kernel"],
                             "output directory '/sys/kernel' is not writable"),
        "uncreatable output": (["batch", "--config", str(good), "--input", str(data), "--output",
                                str(tmp_path / "a-file" / "out")], "cannot create output directory"),
        "non-UTF-8 config": (["batch", "--config", str(latin1), "--input", str(data), "--output",
                              str(tmp_path / "out")], "is not UTF-8 text (byte 0xe9"),
        "missing model": (["serve", "--config", str(missing_model), "--port", str(free_port())],
                          "cannot load model"),
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(lambda case: cola(*case[0]), cases.values()), strict=True))
    for name, (rc, stderr, seconds) in results.items():
        lines = stderr.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and "Traceback" not in stderr, (name, rc, stderr[-2000:])
        assert cases[name][1] in lines[0], (name, lines[0])
        print(f"{name}: {seconds:.1f} s: {lines[0][:160]}")
    assert not (tmp_path / "out").exists()  # nothing was started for the bad config


def test_check_output_directory_creates_missing_directories(tmp_path: Path) -> None:
    assert check_output_directory(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write probe is removed
    with pytest.raises(OSError, match="exists and is not a directory"):
        (tmp_path / "f").write_text("x")
        check_output_directory(tmp_path / "f")
