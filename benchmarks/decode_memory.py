"""Peak memory of a Serve replica decoding four 7,900 x 7,900 16-bit PNGs at once (issue 16's amplification case).

    cd REPO && python benchmarks/decode_memory.py [--config configs/reference.yaml] [--images 4] [--side 7900]

Deploys the moderation app (reference config, 1 replica) on a private loopback cluster, posts ``--images`` 16-bit
greyscale PNGs (``--side`` x ``--side``, a smooth gradient: ~100-200 kB each, within the default pixel limit) to
``POST /v1/moderate`` concurrently, and reads the replica process's peak RSS (``VmHWM`` in ``/proc/PID/status``)
before and after. Prints one JSON line: the replica's RSS before, peak RSS after, and per-request status/latency.
Run it with the decoder of a commit to compare (the float64 path took a replica from 1.3 to 4.5 GB).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def sixteen_bit_png(side: int) -> bytes:
    cache = Path(tempfile.gettempdir()) / f"cola-bench-16bit-{side}.png"
    if not cache.exists():
        ramp = (np.arange(side, dtype=np.uint32) * 65535 // max(1, side - 1)).astype(np.uint16)
        array = np.broadcast_to(ramp, (side, side))
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, "PNG", compress_level=9)
        cache.write_bytes(buffer.getvalue())
    return cache.read_bytes()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def replica_pid() -> int:
    """The replica's process: a child of this private cluster's raylet whose title names the Serve replica (the state
    API needs the dashboard, and other clusters may run on this machine)."""
    from ray._private.worker import global_worker

    raylet = global_worker.node.all_processes["raylet"][0].process.pid
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or status_kib_field(int(proc.name), "PPid") != raylet:
                continue
            title = (proc / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, KeyError):
            continue
        if title.startswith(b"ray::ServeReplica"):
            found.append(int(proc.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one replica process under raylet {raylet}, found {found}")
    return found[0]


def status_kib_field(pid: int, field: str) -> int:
    return status_kib(pid, field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "reference.yaml"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--side", type=int, default=7900)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import httpx

    from cola_moderation.pipeline.jobs.serve_app import deploy_moderation, shutdown_moderation
    from cola_moderation.pipeline.runtime.config import load_config

    base = load_config(args.config)
    config = base.model_copy(update={
        "serve": base.serve.model_copy(update={"port": free_port(), "min_replicas": 1, "max_replicas": 1,
                                               "max_request_bytes": 64 << 20}),
        "ray": base.ray.model_copy(update={"num_cpus": 2, "worker_num_cpus": 1.0}),
    })
    png = sixteen_bit_png(args.side)
    deploy_moderation(config)
    try:
        pid = replica_pid()
        url = f"http://127.0.0.1:{config.serve.port}/v1/moderate"
        with httpx.Client(timeout=600) as client:
            client.post(url, content=sixteen_bit_png(64), headers={"content-type": "image/png"})  # warm
        before_rss, before_peak = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")

        def post(_: int) -> tuple[int, float]:
            started = time.perf_counter()
            with httpx.Client(timeout=600) as client:
                response = client.post(url, content=png, headers={"content-type": "image/png"})
            return response.status_code, round(time.perf_counter() - started, 2)

        with ThreadPoolExecutor(args.images) as pool:
            results = list(pool.map(post, range(args.images)))
        after_peak = status_kib(pid, "VmHWM")
    finally:
        shutdown_moderation(private_cluster=True)
    print(json.dumps({"images": args.images, "side": args.side, "png_bytes": len(png),
                      "replica_rss_before_mb": round(before_rss / 1024), "replica_peak_before_mb":
                      round(before_peak / 1024), "replica_peak_after_mb": round(after_peak / 1024),
                      "requests": results}))


if __name__ == "__main__":
    main()
