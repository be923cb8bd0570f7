"""Files shipped inside the package (configs, the sample data, bundled models), found with :mod:`importlib.resources`.

They live beside the code in the wheel (``cola_moderation/configs``, ``cola_moderation/samples``,
``cola_moderation/operators/assets``) and in the repository (the same folders, linked under ``cola_moderation/``), so
every command finds them from any working directory. Imports nothing heavy: the operators use it.

* configs: ``--config reference`` names ``configs/reference.yaml``; a path to an existing file always wins.
* models: ``model.path: builtin:NAME`` names a directory ``operators/assets/<dir>`` holding a ``config.json``, where
  ``NAME`` is ``<dir>`` without its ``-clip`` part (``reference-clip`` -> ``builtin:reference``,
  ``reference-clip-robust`` -> ``builtin:reference-robust``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cola_moderation.operators.errors import ConfigError, ModelLoadError

BUILTIN_PREFIX = "builtin:"
CONFIG_SUFFIXES = (".yaml", ".yml")


def _directory(package: str, *parts: str) -> Path:
    """A package data directory as a real path (the package must be installed unzipped, as pip does)."""
    root = resources.files(package)
    for part in parts:
        root = root / part
    if not isinstance(root, Path):
        raise FileNotFoundError(f"{package} is not installed as plain files ({root!r}); reinstall it with pip")
    return root


def configs_dir() -> Path:
    return _directory("cola_moderation", "configs")


def samples_dir() -> Path:
    return _directory("cola_moderation", "samples")


def sample_parquet() -> Path:
    """The demo's sample: Fashion-MNIST test images, attacked copies and undecodable rows."""
    return samples_dir() / "sample.parquet"


def assets_dir() -> Path:
    return _directory("cola_moderation.operators", "assets")


def config_names() -> list[str]:
    """Names of the bundled configs (``reference``, ``moderation``, ...)."""
    return sorted(p.stem for p in configs_dir().iterdir() if p.suffix in CONFIG_SUFFIXES)


def config_path(name_or_path: str | Path) -> Path:
    """The config file ``name_or_path`` means: an existing file as given, else a bundled config named so
    (``reference``, or ``reference.yaml``). Raises :class:`ConfigError` listing the bundled names otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if "/" not in text and "\\" not in text:
        stem = path.stem if path.suffix in CONFIG_SUFFIXES else text
        for suffix in CONFIG_SUFFIXES:
            bundled = configs_dir() / f"{stem}{suffix}"
            if bundled.is_file():
                return bundled
    raise ConfigError(f"cannot read config {text}: no such file, and no bundled config of that name "
                      f"(bundled: {', '.join(config_names())})")


def builtin_models() -> dict[str, Path]:
    """``{name: directory}`` of the bundled models usable as ``builtin:NAME``."""
    root = assets_dir()
    if not root.is_dir():
        return {}
    return {p.name.replace("-clip", "", 1): p for p in sorted(root.iterdir()) if (p / "config.json").is_file()}


def builtin_model_dir(name: str) -> Path:
    """The directory of the bundled model ``name`` (``reference`` or ``builtin:reference``)."""
    name = name.removeprefix(BUILTIN_PREFIX)
    models = builtin_models()
    if name not in models:
        available = ", ".join(BUILTIN_PREFIX + n for n in models) or "none installed"
        raise ModelLoadError(f"unknown builtin model {BUILTIN_PREFIX + name!r}; available: {available}")
    directory = models[name]
    if not (directory / "model.safetensors").is_file():
        raise ModelLoadError(f"the bundled model {BUILTIN_PREFIX + name} has no weights in {directory}; reinstall "
                             "the package (or run `cola train-reference` for the reference model)")
    return directory
