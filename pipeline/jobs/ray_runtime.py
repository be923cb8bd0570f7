"""Starting or joining a Ray cluster, and checking it can host the workers before anything is scheduled.

Defaults suit a laptop or CI box: a private cluster bound to 127.0.0.1, no dashboard, no usage stats. For a real
cluster pass ``--address`` (or set ``ray.address`` / ``RAY_ADDRESS``); nothing else changes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from cola_moderation.operators.errors import ColaError
from cola_moderation.pipeline.runtime.ray_config import RayConfig

log = logging.getLogger(__name__)

# Environment Ray reads at start-up (inherited by the raylet and workers of a private cluster). setdefault: an
# operator's own settings win.
RAY_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # else Ray binds a non-loopback address on these machines
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",  # num_gpus=0 workers must not see (and grab) GPUs
    "RAY_DEDUP_LOGS": "1",
    # Serve's HTTP proxy installs this project's header guard (see pipeline/jobs/http_guard.py)
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "cola_moderation.pipeline.jobs.http_guard:proxy_middlewares",
    # Serve gives a new HTTP proxy 5 s to answer its readiness check, three times, then kills it; a loaded 2-core
    # node needs longer than that for the proxy's process to start and import (measured: deploy failed at load 12).
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
}


_private_cluster = False
"""Whether :func:`init_ray` started a private (loopback, fixed-size) cluster in this process."""


class ClusterResourceError(ColaError, RuntimeError):
    """The cluster cannot host the requested workers (Ray would otherwise wait forever)."""

    stage = "scheduling"


def init_ray(config: RayConfig, *, address: str | None = None) -> dict[str, Any]:
    """Connect to (``address`` / ``ray.address`` / ``RAY_ADDRESS``) or start a loopback Ray cluster; idempotent.

    A private cluster runs without token authentication (``RAY_AUTH_MODE=disabled`` unless set: it is bound to
    127.0.0.1, and a stray ``~/.ray/auth_token`` would otherwise turn auth on with a warning). Ray's own INFO logs
    (Ray Data, Serve) reach the console only when the root logger is at INFO or below (``cola -v``).
    Returns ``ray.cluster_resources()``.
    """
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    target = address or config.address or os.environ.get("RAY_ADDRESS")
    if not target:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray  # after the environment: Ray reads it at import

    global _private_cluster
    if not ray.is_initialized():
        _private_cluster = not target
        common: dict[str, Any] = {"namespace": config.namespace, "log_to_driver": True,
                                  "logging_level": logging.WARNING}
        if target:
            log.info("connecting to the Ray cluster at %s", target)
            ray.init(address=target, **common)
        else:
            log.info("starting a private Ray cluster on 127.0.0.1")
            ray.init(num_cpus=config.num_cpus, include_dashboard=config.include_dashboard,
                     _node_ip_address="127.0.0.1", **common)
    quiet_ray_console()
    return dict(ray.cluster_resources())


def is_private_cluster() -> bool:
    """Whether this process started the cluster it is connected to (loopback, fixed size: it never grows)."""
    return _private_cluster


def quiet_ray_console() -> None:
    """Ray Data's and Serve's console handlers at WARNING unless our root logger asks for INFO (their session log
    files keep everything)."""
    level = logging.INFO if logging.getLogger().getEffectiveLevel() <= logging.INFO else logging.WARNING
    for name in ("ray.data", "ray.serve"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
                handler.setLevel(level)


def node_resources() -> list[dict[str, float]]:
    """Total resources of each live node."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def check_worker_resources(config: RayConfig, *, workers: int, max_workers: int | None = None,
                           reserve_cpus: float = 0.0, nodes: list[dict[str, float]] | None = None) -> None:
    """Fail fast, naming the config key, if the ``workers`` model workers a job starts with cannot all be placed.

    ``reserve_cpus`` is what the job needs besides the workers (decode/read tasks, consumers): a pool that takes
    every CPU starves them and the job hangs. ``max_workers`` (what a pool or Serve may scale up to) is only
    warned about when the cluster is too small now: an autoscaling cluster grows when the workers are asked for.
    """
    fixed_size = nodes is None and _private_cluster  # the live cluster, and it is a private one: it never grows
    nodes = node_resources() if nodes is None else nodes
    demand = {"CPU": config.worker_num_cpus, "GPU": config.worker_num_gpus, **config.worker_resources}
    demand = {key: value for key, value in demand.items() if value > 0}
    placeable = sum(_fits(node, demand) for node in nodes)
    if placeable == 0:
        offered = {key: max((n.get(key, 0.0) for n in nodes), default=0.0) for key in demand}
        missing = {key: value for key, value in demand.items() if offered[key] < value}
        key_names = {"CPU": "ray.worker_num_cpus", "GPU": "ray.worker_num_gpus"}
        named = ", ".join(f"{key_names.get(k, f'ray.worker_resources.{k}')}={v}" for k, v in missing.items())
        raise ClusterResourceError(
            f"no node can host a model worker: {named or demand} requested, the largest node offers {offered}"
            + (" (this cluster has no GPU: set ray.worker_num_gpus: 0 and model.device: cpu)"
               if "GPU" in missing and offered.get("GPU", 0) == 0 else "")
        )
    total = {key: sum(n.get(key, 0.0) for n in nodes) for key in demand}
    for key, per_worker in demand.items():
        if per_worker * workers > total[key] + 1e-9:
            raise ClusterResourceError(
                f"{workers} workers x {per_worker} {key} exceed the cluster's {total[key]:g} {key}; lower the worker "
                "count (ray.actor_pool_max / serve.max_replicas) or the per-worker resources"
            )
    total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
    if reserve_cpus > 0 and config.worker_num_cpus * workers + reserve_cpus > total_cpu + 1e-9:
        raise ClusterResourceError(
            f"{workers} workers x ray.worker_num_cpus={config.worker_num_cpus} leave less than the {reserve_cpus:g} "
            f"CPU the job's other tasks need on a cluster of {total_cpu:g} CPUs; the job would hang. Lower "
            "ray.worker_num_cpus (fractions are fine)"
        )
    if max_workers is not None and max_workers > workers:
        short = [key for key, per_worker in demand.items() if per_worker * max_workers > total[key] + 1e-9]
        if reserve_cpus > 0 and config.worker_num_cpus * max_workers + reserve_cpus > total_cpu + 1e-9:
            short.append("CPU for the other tasks")
        if short:
            # A private cluster never grows: say so quietly (the configured maximum is an upper bound, not an error).
            log.log(logging.INFO if fixed_size else logging.WARNING,
                    "the cluster can host %d model workers now but is configured to scale to %d; the extra "
                    "workers start only if the cluster grows (short of: %s)", workers, max_workers, ", ".join(short))


def _fits(node: dict[str, float], demand: dict[str, float]) -> bool:
    return all(node.get(key, 0.0) >= value for key, value in demand.items())


def worker_options(config: RayConfig) -> dict[str, Any]:
    """``num_cpus``/``num_gpus``/``resources`` options for a model actor or replica."""
    options: dict[str, Any] = {"num_cpus": config.worker_num_cpus, "num_gpus": config.worker_num_gpus}
    if config.worker_resources:
        options["resources"] = dict(config.worker_resources)
    return options
