"""HTTP load while Serve replicas go away: every response counted, for a downscale and for a ``cola serve`` SIGTERM.

    python benchmarks/serve_drain.py [--clients 20] [--seconds 8] [--scenario downscale|shutdown|both]

* downscale: the app deployed on a private loopback cluster with 2 replicas (0.5 CPU each), ``--clients``
  closed-loop clients posting a PNG to ``POST /v1/moderate``; after ``--seconds`` the app is redeployed with 1
  replica (what a downscale or a config change does: Serve stops routing to the replica it removes and lets it
  finish its requests), and the load goes on for ``--seconds`` more.
* shutdown: ``cola serve`` in a subprocess under the same load; after ``--seconds`` it gets SIGTERM. Requests sent
  before the signal must all be answered; afterwards new connections are refused once the server is gone.

Printed per scenario: responses by status, 5xx, requests whose response was lost (sent, connection cut before an
answer), connections refused, wall time. Clients and replicas share the machine's CPUs.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
PNG = (REPO / "samples" / "images" / "bag.png").read_bytes()


class Load:
    """``clients`` threads posting PNGs until :meth:`stop`; outcomes counted by kind."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.stopped_at: float | None = None
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                when = "" if self.stopped_at is None or sent < self.stopped_at else " (sent after the stop)"
                try:
                    response = client.post(self.url, content=PNG, headers={"content-type": "image/png"})
                except httpx.ConnectError:
                    self._count("connection refused")
                    time.sleep(0.05)
                    continue
                except httpx.HTTPError as exc:  # sent, but the connection ended before a response
                    self._count(f"lost ({type(exc).__name__}){when}")
                    continue
                self._count(f"HTTP {response.status_code}{when}")

    def stop(self) -> collections.Counter[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)
        return self.counts


def report(name: str, counts: collections.Counter[str], seconds: float) -> None:
    errors_5xx = sum(n for kind, n in counts.items() if kind.startswith("HTTP 5"))
    lost = sum(n for kind, n in counts.items() if kind.startswith("lost") and "after the stop" not in kind)
    print(f"{name}: {dict(sorted(counts.items()))}; 5xx {errors_5xx}; lost responses (sent before the stop) {lost}; "
          f"{seconds:.1f} s", flush=True)


def config_data(port: int, replicas: int) -> dict[str, Any]:
    data = yaml.safe_load((REPO / "configs" / "reference.yaml").read_text())
    data["model"] = {**data["model"], "device": "cpu"}
    data["ray"] = {"num_cpus": 2, "worker_num_cpus": 0.5}
    data["serve"] = {"port": port, "min_replicas": replicas, "max_replicas": replicas}
    return dict(data)


def downscale(clients: int, seconds: float) -> None:
    from ray import serve

    from cola_moderation.pipeline.jobs.serve_app import APP_NAME, build_app, deploy_moderation, shutdown_moderation
    from cola_moderation.pipeline.runtime.config import parse_config
    from tests.pipeline.jobs.test_serve_app import free_port

    port = free_port()
    base = REPO / "configs"
    deploy_moderation(parse_config(config_data(port, 2), base_dir=base))
    started = time.monotonic()
    load = Load(f"http://127.0.0.1:{port}/v1/moderate", clients).start()
    try:
        time.sleep(seconds)
        print(f"downscale: 2 -> 1 replica at {time.monotonic() - started:.1f} s", flush=True)
        serve.run(build_app(parse_config(config_data(port, 1), base_dir=base)), name=APP_NAME, route_prefix="/")
        time.sleep(seconds)
    finally:
        counts = load.stop()
        shutdown_moderation(private_cluster=True)
    report("downscale 2 -> 1 under load", counts, time.monotonic() - started)


def shutdown(clients: int, seconds: float) -> None:
    from tests.pipeline.jobs.test_serve_app import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "serve.yaml"
        config.write_text(yaml.safe_dump(config_data(port, 2)))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        server = subprocess.Popen([sys.executable, "-m", "cola_moderation.pipeline.cli", "serve", "--config",
                                   str(config)], env=env, cwd=REPO)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            started = time.monotonic()
            load = Load(f"http://127.0.0.1:{port}/v1/moderate", clients).start()
            time.sleep(seconds)
            print(f"shutdown: SIGTERM at {time.monotonic() - started:.1f} s", flush=True)
            load.stopped_at = time.monotonic()
            server.send_signal(signal.SIGTERM)
            rc = server.wait(timeout=120)
            time.sleep(1.0)
            counts = load.stop()
            print(f"cola serve exited {rc} {time.monotonic() - started:.1f} s after the load began", flush=True)
        finally:
            if server.poll() is None:
                server.kill()
        report("cola serve SIGTERM under load", counts, time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--scenario", choices=["downscale", "shutdown", "both"], default="both")
    args = parser.parse_args()
    if args.scenario in ("downscale", "both"):
        downscale(args.clients, args.seconds)
    if args.scenario in ("shutdown", "both"):
        shutdown(args.clients, args.seconds)


if __name__ == "__main__":
    main()
