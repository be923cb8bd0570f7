"""Checks the jobs run before starting Ray, so that a wrong setting is one line and exit code 2 within seconds
instead of a traceback after the cluster, the replicas and the model came up.

Each check raises a :class:`~cola_moderation.operators.errors.ColaError` whose message names the setting and the
cause; ``cola`` prints it as ``cola COMMAND: message`` and exits 2.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

from cola_moderation.operators.config import ModelConfig
from cola_moderation.operators.errors import ColaError


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


def check_model(config: ModelConfig) -> None:
    """Raise :class:`~cola_moderation.operators.errors.ModelLoadError` unless the model's preprocessing config can be
    read (a missing directory or an unknown hub id fails here, before Ray starts)."""
    from cola_moderation.operators.backbones.registry import load_geometry

    load_geometry(config)
