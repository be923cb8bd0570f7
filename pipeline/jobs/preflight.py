"""Checks the jobs run before starting Ray, so that a wrong setting is one line and exit code 2 within seconds
instead of a traceback after the cluster, the replicas and the model came up.

Each check raises a :class:`~cola_moderation.operators.errors.ColaError` whose message names the setting and the
cause; ``cola`` prints it as ``cola COMMAND: message`` and exits 2.
"""

from __future__ import annotations

import errno
import os
import socket
import time
import uuid
from pathlib import Path

from cola_moderation.connectors.errors import BrokerError
from cola_moderation.operators.config import ModelConfig
from cola_moderation.operators.errors import ColaError, ConfigError


class OutputDirectoryError(ColaError, OSError):
    """The output directory cannot be created or written."""

    stage = "setup"


def check_output_directory(path: str | Path) -> Path:
    """Create ``path`` (and parents) if missing and prove it is writable by creating and removing a file in it."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputDirectoryError(f"output directory {str(directory)!r} exists and is not a directory") from None
    except OSError as exc:
        raise OutputDirectoryError(f"cannot create output directory {str(directory)!r}: "
                                   f"{exc.strerror or exc}") from None
    probe = directory / f".cola-write-check-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        reason = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
        raise OutputDirectoryError(f"output directory {str(directory)!r} is not writable: {reason}") from None
    finally:
        probe.unlink(missing_ok=True)
    return directory


def check_broker(bootstrap_servers: str, *, timeout_s: float = 10.0, setting: str = "kafka.bootstrap_servers") -> None:
    """Raise :class:`BrokerError` unless a Kafka broker answers at one of ``bootstrap_servers`` within ``timeout_s``
    (TCP connect, then a metadata request)."""
    addresses = [item.strip() for item in bootstrap_servers.split(",") if item.strip()]
    if not addresses:
        raise ConfigError(f"{setting} is empty")
    deadline = time.monotonic() + timeout_s
    errors = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{setting}: {address!r} is not HOST:PORT")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=max(0.5, deadline - time.monotonic())):
                pass
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror or exc}")
            continue
        if _answers_metadata(address, max(1.0, deadline - time.monotonic())):
            return
        errors.append(f"{address}: accepts connections but does not answer as a Kafka broker")
    raise BrokerError(f"cannot reach the Kafka broker at {bootstrap_servers} ({setting} / --bootstrap): "
                      + "; ".join(errors))


def broker_reachable(bootstrap_servers: str, *, timeout_s: float = 1.0) -> str | None:
    """``None`` when one of ``bootstrap_servers`` accepts a TCP connection, else why none did (one line)."""
    errors = []
    for address in (item.strip() for item in bootstrap_servers.split(",") if item.strip()):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return None
        except (OSError, ValueError) as exc:
            errors.append(f"{address}: {getattr(exc, 'strerror', None) or exc}")
    return "; ".join(errors) or "no address"


def _answers_metadata(address: str, timeout_s: float) -> bool:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(bootstrap_servers=[address], request_timeout_ms=int(timeout_s * 1000),
                                 session_timeout_ms=min(6000, int(timeout_s * 1000) - 1),
                                 heartbeat_interval_ms=min(1500, int(timeout_s * 1000) // 4))
    except (KafkaError, OSError, ValueError):
        return False
    try:
        consumer.topics()
        return True
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        consumer.close()


def check_model(config: ModelConfig) -> None:
    """Raise :class:`~cola_moderation.operators.errors.ModelLoadError` unless the model's preprocessing config can be
    read (a missing directory or an unknown hub id fails here, before Ray starts)."""
    from cola_moderation.operators.backbones.registry import load_geometry

    load_geometry(config)
