"""The project's exception hierarchy.

Every error the pipeline can route somewhere (dead-letter topic, error line on stdout, HTTP 4xx) derives from
:class:`ColaError`. Each carries the pipeline ``stage`` it was raised in, so dead-letter records can say where a
record failed without parsing messages.
"""

from __future__ import annotations


class ColaError(Exception):
    """Root of all errors raised by cola-moderation."""

    stage: str = "pipeline"


class ConfigError(ColaError, ValueError):
    """A configuration file or value is invalid. The message names the offending key path."""

    stage = "config"


class DecodeError(ColaError, ValueError):
    """An input could not be turned into an image tensor (empty, truncated, unsupported, too large...)."""

    stage = "decode"


class ModelLoadError(ColaError, RuntimeError):
    """A model checkpoint, tokenizer or processor could not be loaded."""

    stage = "model"


class DeviceError(ColaError, RuntimeError):
    """The requested device or dtype is not available on this machine."""

    stage = "model"


class MissingDependencyError(ColaError, ImportError):
    """An optional dependency is not installed; the message gives the exact ``pip install`` to run."""

    stage = "setup"


def error_fields(exc: BaseException, *, stage: str | None = None) -> dict[str, str]:
    """Return the ``error.class`` / ``error.message`` / ``error.stage`` triple used in dead-letter records."""
    return {
        "error.class": type(exc).__name__,
        "error.message": str(exc) or repr(exc),
        "error.stage": stage or getattr(exc, "stage", "pipeline"),
    }
