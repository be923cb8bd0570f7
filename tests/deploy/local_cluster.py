"""A real multi-node Ray cluster on one machine, on 127.0.0.1 only: a head node and worker nodes started with
``ray start --block`` as separate process trees, and stopped by exactly those process trees.

Why not plain ``ray start --address 127.0.0.1:PORT`` for the worker: with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (what
keeps a node on loopback, see :data:`cola_moderation.pipeline.jobs.ray_runtime.RAY_ENV_DEFAULTS`) Ray 2.60's CLI refuses
to add a worker node, and with it at ``1`` the CLI rewrites ``127.0.0.1`` (the GCS address and ``--node-ip-address``) to
the machine's routable address, where the loopback-bound head cannot be reached. Worker nodes are therefore started with
the same ``ray start`` command line through :data:`WORKER_LAUNCHER`, which keeps ``127.0.0.1`` as given (the only
change). Every Ray process of both nodes then binds 127.0.0.1.

Nothing here touches other Ray clusters on the machine: each node has its own ``--temp-dir``, free ports, its own
session (``setsid``), and :meth:`LocalRayCluster.stop` signals only the processes of those sessions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from cola_moderation.connectors.local.broker import free_port
from cola_moderation.pipeline.jobs.ray_runtime import RAY_ENV_DEFAULTS

HOST = "127.0.0.1"
RAY = Path(sys.executable).with_name("ray")

WORKER_LAUNCHER = (
    "import sys\n"
    "import ray._private.services as services\n"
    "services.resolve_ip_for_localhost = lambda host: host  # keep 127.0.0.1: the head listens on loopback only\n"
    "from ray.scripts.scripts import main\n"
    "sys.argv[0] = 'ray'\n"
    "sys.exit(main())\n"
)


def cluster_env(**extra: str) -> dict[str, str]:
    """Environment for the cluster's processes and its drivers: the project's Ray defaults, no token auth (a local
    test cluster; ``~/.ray/auth_token`` left by other tools would otherwise switch it on for some processes only),
    and ``RAY_ADDRESS`` removed so nothing joins another cluster by accident."""
    env = {**os.environ, **RAY_ENV_DEFAULTS, "RAY_AUTH_MODE": "disabled", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def session_processes(leader: int) -> list[int]:
    """PIDs of every live process in the session led by ``leader`` (Linux ``/proc``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == leader:
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


class LocalRayCluster:
    """``with LocalRayCluster() as cluster: cluster.add_worker(resources={"model_node": 1})`` -> ``cluster.address``."""

    def __init__(self, *, head_cpus: int = 1, dashboard: bool = False, env: dict[str, str] | None = None,
                 start_timeout_s: float = 90.0) -> None:
        self.head_cpus = head_cpus
        self.dashboard_port = free_port() if dashboard else None
        """The head's dashboard (and state API, ``ray.util.state``) on 127.0.0.1, when ``dashboard``."""
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.temp_dir = Path(tempfile.mkdtemp(prefix="cola-ray-", dir="/tmp"))  # short: Ray's socket paths
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.metrics_ports: list[int] = []
        """Each node's Prometheus endpoint (``http://127.0.0.1:PORT/metrics``), in start order (head first)."""
        self.env = cluster_env(DASHBOARD_METRIC_PORT=str(free_port()), AUTOSCALER_METRIC_PORT=str(free_port()),
                               **(env or {}))
        """Environment of every node and of the drivers a test starts."""

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        if self.dashboard_port is None:
            raise RuntimeError("this LocalRayCluster was started without dashboard=True")
        return f"http://{HOST}:{self.dashboard_port}"

    def start(self) -> LocalRayCluster:
        dashboard = (["--include-dashboard", "true", "--dashboard-host", HOST, "--dashboard-port",
                      str(self.dashboard_port)] if self.dashboard_port else ["--include-dashboard", "false"])
        self._launch("head", [str(RAY), "start", "--head", "--port", str(self.port), *dashboard,
                              "--disable-usage-stats", "--ray-client-server-port", str(free_port())],
                     cpus=self.head_cpus, resources={}, env=self.env)
        self.wait_for_nodes(1)
        return self

    def add_worker(self, *, cpus: int = 1, resources: dict[str, float] | None = None) -> None:
        """Start one more node joining the head; waits until the cluster lists it."""
        env = {**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}  # lets `ray start --address` add a node
        self._launch(f"worker-{len(self.nodes)}",
                     [sys.executable, "-c", WORKER_LAUNCHER, "start", "--address", self.address],
                     cpus=cpus, resources=resources or {}, env=env)
        self.wait_for_nodes(len(self.nodes))

    def _launch(self, name: str, command: list[str], *, cpus: int, resources: dict[str, float],
                env: dict[str, str]) -> None:
        log = (self.temp_dir / f"{name}.log").open("wb")
        self.metrics_ports.append(free_port())
        command = [*command, "--block", "--node-ip-address", HOST, "--num-cpus", str(cpus),
                   "--temp-dir", str(self.temp_dir), "--dashboard-agent-listen-port", str(free_port()),
                   "--metrics-export-port", str(self.metrics_ports[-1])]
        if resources:
            command += ["--resources", json.dumps(resources)]
        self.nodes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True))
        log.close()

    def alive_nodes(self) -> list[dict[str, object]]:
        """``ray.nodes()`` of the live nodes, read by a short-lived driver process."""
        code = (f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False);"
                "print(json.dumps([{'NodeID': n['NodeID'], 'Resources': n['Resources']} for n in ray.nodes() "
                "if n['Alive']]))")
        done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                              timeout=60, check=False)
        if done.returncode != 0:
            return []
        return list(json.loads(done.stdout.strip().splitlines()[-1]))

    def wait_for_nodes(self, count: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.poll() is not None:
                    raise RuntimeError(f"a Ray node exited with {node.returncode}: {self.logs()}")
            if len(self.alive_nodes()) >= count:
                return
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes not up after {self.start_timeout_s}s: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.temp_dir.glob("*.log")))

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every node's ``ray start --block`` (each shuts its node down), wait up to ``timeout_s`` for them,
        then SIGKILL whatever is still alive in those sessions (a test cluster needs no graceful drain)."""
        for node in self.nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            try:
                node.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        # `ray start` has exited; give the processes it stopped a moment, not the whole grace period
        deadline = min(deadline, time.monotonic() + 3)
        while any(session_processes(node.pid) for node in self.nodes) and time.monotonic() < deadline:
            time.sleep(0.2)
        for node in self.nodes:
            for pid in session_processes(node.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
