"""Serve autoscaling under HTTP load: the moderation deployment going from 1 to 2 replicas, observed.

    ./dev bench serve_autoscale [--config configs/reference.yaml] [--clients 12] [--load-seconds 40]

Deploys the app on a private loopback cluster with min 1 / max 2 replicas (0.5 CPU each, so both fit 2 cores),
target 2 ongoing requests per replica and a 1 s upscale delay; then
1. light load: one closed-loop client (at most 1 request in flight, below the target: stays at 1 replica);
2. heavy load: ``--clients`` closed-loop clients posting JPEGs to ``POST /v1/moderate`` over 127.0.0.1.
A poller reads ``serve.status()`` every 0.25 s and prints each change of the deployment's status and replica
states, with the time since heavy load began. At the end: request rate and p50/p99 latency per phase (light;
heavy with 1 replica; heavy once 2 replicas run). Clients and replicas share the same CPUs here, so the rates are
those of this machine, not of the service alone.

Without ``--config``: ``configs/reference.yaml`` when the bundled reference model exists, else a small random CLIP
(speed, not accuracy, is what matters here).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import _common
import httpx

from cola_moderation.pipeline.runtime.config import PipelineConfig, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent


def default_config() -> tuple[PipelineConfig, str]:
    """The reference config when its model is bundled, else a small random CLIP with the reference taxonomy."""
    reference = REPO / "configs" / "reference.yaml"
    config = load_config(reference)
    if (REPO / "operators" / "assets" / "reference-clip").is_dir():
        return config, f"{reference} (builtin:reference)"
    from cola_moderation.operators.backbones.checkpoint import TINY, new_clip_model, save_checkpoint

    directory = Path(tempfile.gettempdir()) / "cola-bench-tiny"
    if not (directory / "model.safetensors").exists():
        save_checkpoint(new_clip_model(TINY, seed=0), directory, image_size=TINY.image_size)
    data = config.model_dump(mode="json", exclude_defaults=True)
    data["model"] = {**data.get("model", {}), "path": str(directory)}
    return parse_config(data), f"{reference} taxonomy, random tiny CLIP (no bundled reference model)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def autoscaling_config(config: PipelineConfig, port: int) -> PipelineConfig:
    serve = config.serve.model_copy(update={
        "host": "127.0.0.1", "port": port, "min_replicas": 1, "initial_replicas": 1, "max_replicas": 2,
        "target_ongoing_requests": 2.0, "upscale_delay_s": 1.0, "downscale_delay_s": 600.0,
        "max_ongoing_requests": 8, "max_batch_size": 8, "batch_wait_timeout_s": 0.01})
    ray = config.ray.model_copy(update={"num_cpus": 2, "worker_num_cpus": 0.5, "worker_num_gpus": 0.0,
                                        "address": None})
    model = config.model.model_copy(update={"device": "cpu"})
    return config.model_copy(update={"serve": serve, "ray": ray, "model": model})


@dataclass
class Load:
    """Closed-loop HTTP clients; every answer is kept as (finish time, latency seconds, status)."""

    url: str
    images: list[bytes]
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, index: int) -> None:
        with httpx.Client(timeout=120) as http:
            n = index
            while not self.stop.is_set():
                started = time.perf_counter()
                response = http.post(self.url, content=self.images[n % len(self.images)],
                                     headers={"content-type": "image/jpeg"})
                finished = time.perf_counter()
                with self.lock:
                    self.samples.append((finished, finished - started, response.status_code))
                n += 1

    @contextmanager
    def running(self, clients: int) -> Iterator[None]:
        self.stop.clear()
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(clients)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()

    def window(self, start: float, end: float) -> str:
        with self.lock:
            inside = [(lat, status) for t, lat, status in self.samples if start <= t < end]
        if len(inside) < 2 or end <= start:
            return f"{len(inside)} requests"
        cuts = statistics.quantiles([lat * 1000 for lat, _ in inside], n=100)
        errors = sum(status != 200 for _, status in inside)
        return (f"{len(inside) / (end - start):7.1f} req/s  p50 {cuts[49]:6.0f} ms  p99 {cuts[98]:6.0f} ms  "
                f"({len(inside)} requests, {errors} non-200)")


def replica_view() -> tuple[str, dict[str, int]]:
    """(deployment status + trigger, replica counts by state) from ``serve.status()``."""
    from ray import serve

    from cola_moderation.pipeline.jobs.serve_app import APP_NAME, DEPLOYMENT_NAME

    app = serve.status().applications.get(APP_NAME)
    if app is None or DEPLOYMENT_NAME not in app.deployments:
        return "absent", {}
    deployment = app.deployments[DEPLOYMENT_NAME]
    states = {str(getattr(state, "value", state)): count for state, count in deployment.replica_states.items()}
    return f"{deployment.status.value}/{deployment.status_trigger.value}", states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="pipeline config (default: see above)")
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--light-seconds", type=float, default=8.0)
    parser.add_argument("--load-seconds", type=float, default=40.0, help="heavy load lasts at most this long")
    parser.add_argument("--after-scale-seconds", type=float, default=10.0,
                        help="keep the heavy load this long once 2 replicas run")
    args = parser.parse_args()

    from cola_moderation.pipeline.jobs.serve_app import deploy_moderation, shutdown_moderation

    base, described = (load_config(args.config), str(args.config)) if args.config else default_config()
    port = free_port()
    config = autoscaling_config(base, port)
    images = _common.photo_like_jpegs(8, width=320, height=240)
    print(f"config: {described}; method {config.method}; replicas min 1 / max 2 x {config.ray.worker_num_cpus} CPU; "
          f"target_ongoing_requests {config.serve.target_ongoing_requests}, upscale_delay_s "
          f"{config.serve.upscale_delay_s}; {args.clients} clients; 320x240 JPEGs", flush=True)
    began = time.perf_counter()
    deploy_moderation(config)
    print(f"deployed in {time.perf_counter() - began:.1f} s: {replica_view()}", flush=True)
    load = Load(f"http://127.0.0.1:{port}/v1/moderate", images)
    try:
        light_start = time.perf_counter()
        with load.running(1):
            time.sleep(args.light_seconds)
        light_end = time.perf_counter()
        print(f"light load (1 client, {args.light_seconds:.0f} s): {load.window(light_start, light_end)}; "
              f"replicas {replica_view()[1]}", flush=True)

        heavy_start = time.perf_counter()
        two_running: float | None = None
        last = replica_view()
        print(f"[  0.00 s] heavy load starts: {args.clients} clients; {last[0]} {last[1]}", flush=True)
        with load.running(args.clients):
            while time.perf_counter() - heavy_start < args.load_seconds:
                time.sleep(0.25)
                view = replica_view()
                now = time.perf_counter()
                if view != last:
                    print(f"[{now - heavy_start:6.2f} s] {view[0]} {view[1]}  (last 2 s: "
                          f"{load.window(now - 2, now)})", flush=True)
                    last = view
                if two_running is None and view[1].get("RUNNING", 0) >= 2:
                    two_running = now
                if two_running is not None and now - two_running >= args.after_scale_seconds:
                    break
        heavy_end = time.perf_counter()
        print("summary:")
        print(f"  light, 1 replica:            {load.window(light_start, light_end)}")
        if two_running is None:
            print(f"  heavy, 1 replica:            {load.window(heavy_start, heavy_end)}")
            print(f"  NO SCALE-UP within {args.load_seconds:.0f} s of heavy load")
        else:
            print(f"  heavy, until 2 replicas run: {load.window(heavy_start, two_running)}")
            print(f"  heavy, 2 replicas running:   {load.window(two_running, heavy_end)}")
            print(f"  1 -> 2 replicas RUNNING {two_running - heavy_start:.2f} s after heavy load began")
    finally:
        shutdown_moderation(private_cluster=True)


if __name__ == "__main__":
    main()
