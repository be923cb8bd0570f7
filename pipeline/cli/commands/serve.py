"""``cola serve --config C [--host 127.0.0.1] [--port 8000] [--address RAY_ADDRESS]``: the moderation HTTP service
on Ray Serve, until Ctrl-C or SIGTERM.

On a private cluster (no ``--address`` / ``ray.address`` / ``RAY_ADDRESS``) stopping shuts Serve and Ray down; on an
existing cluster it deletes only this application. Exit status 0 after a signal-initiated stop.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from cola_moderation.pipeline.runtime.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML config")
    parser.add_argument("--host", help="HTTP bind address (default: serve.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default: serve.port, 8000)")
    parser.add_argument("--address", help="Ray cluster address (default: ray.address, RAY_ADDRESS, or a private one)")


def run(args: argparse.Namespace) -> int:
    from cola_moderation.pipeline.jobs.preflight import check_model

    config = load_config(args.config)
    check_model(config.model)  # a missing model is one line before Ray starts
    from cola_moderation.pipeline.jobs.ray_runtime import init_ray
    from cola_moderation.pipeline.jobs.serve_app import deploy_moderation, shutdown_moderation, uses_private_cluster

    host = args.host or config.serve.host
    port = args.port or config.serve.port
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: abort now (still shutting down in the finally)
        stop.set()  # the first one (even during start-up): stop once the deployment is up

    private = uses_private_cluster(config, args.address)
    # after ray.init: Ray's core worker installs a crash handler for SIGTERM that would abort the process
    init_ray(config.ray, address=args.address)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        deploy_moderation(config, address=args.address, host=host, port=port)
        print(f"cola serve: http://{host}:{port} (POST /v1/moderate, GET /v1/labels, GET /healthz); "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
        print("cola serve: stopping", file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutdown_moderation(private_cluster=private)
    return 0
