"""Where a checkpoint's files come from, and how its weights are read safely.

``model.path`` spellings: ``builtin:NAME`` (bundled with this package), a local directory, ``hf-hub:ORG/NAME``
(open_clip's spelling) or ``ORG/NAME`` (transformers'). Hub files come from the Hugging Face cache; with
``HF_HUB_OFFLINE=1`` nothing is downloaded and a file missing from the cache counts as absent. ``model.revision``
pins a hub revision.

Weights: safetensors whenever the checkpoint has them; a pickle (``.bin``/``.pth``) only through
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers and refuses anything else, so a
crafted pickle runs nothing and fails with one line (:func:`load_torch_file`). No remote code is ever executed.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cola_moderation import resources
from cola_moderation.operators.errors import ModelLoadError

log = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@dataclass(frozen=True)
class ModelSource:
    """A configured ``model.path`` resolved to a local directory or a hub repository (read lazily, file by file)."""

    spec: str
    directory: Path | None
    repo_id: str | None
    revision: str | None = None

    @classmethod
    def resolve(cls, path: str, revision: str | None = None) -> ModelSource:
        if path.startswith(resources.BUILTIN_PREFIX):
            return cls(path, resources.builtin_model_dir(path), None)
        if path.startswith(HF_HUB_PREFIX):
            repo_id = path.removeprefix(HF_HUB_PREFIX)
            if repo_id.count("/") != 1:
                raise ModelLoadError(f"cannot load model {path!r}: expected hf-hub:ORG/NAME")
            return cls(path, None, repo_id, revision)
        local = Path(path).expanduser()
        if local.is_dir():
            return cls(path, local, None)
        if path.count("/") == 1 and not path.startswith((".", "/", "~")):
            return cls(path, None, path, revision)
        raise ModelLoadError(f"cannot load model {path!r}: model.path is not a directory, a hub id (ORG/NAME) or "
                             "hf-hub:ORG/NAME")

    @property
    def location(self) -> str:
        """What ``from_pretrained`` takes: the directory or the repo id."""
        return str(self.directory) if self.directory is not None else str(self.repo_id)

    def file(self, name: str) -> Path | None:
        """The local path of ``name`` in this checkpoint (downloaded into the cache unless offline), or ``None``."""
        if self.directory is not None:
            candidate = self.directory / name
            return candidate if candidate.is_file() else None
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

        repo_id = str(self.repo_id)
        cached = try_to_load_from_cache(repo_id, name, revision=self.revision)
        if isinstance(cached, str):
            return Path(cached)
        if cached is not None or hub_offline():  # cached "no such file" marker, or not allowed to look
            return None
        try:
            return Path(hf_hub_download(repo_id, name, revision=self.revision))
        except EntryNotFoundError:
            return None
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
            raise ModelLoadError(f"cannot fetch {name} of {self.spec!r}: {' '.join(str(exc).split())}") from exc

    def first_file(self, *names: str) -> Path | None:
        for name in names:
            found = self.file(name)
            if found is not None:
                return found
        return None

    def missing(self, what: str) -> ModelLoadError:
        if self.directory is not None:
            return ModelLoadError(f"cannot load model {self.spec!r}: the directory has no {what}")
        hint = ("it is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading: run "
                f"`hf download {self.repo_id}` first" if hub_offline() else "the repository does not have it")
        return ModelLoadError(f"cannot load model {self.spec!r}: no {what} ({hint})")


def load_torch_file(path: Path, *, what: str = "weights") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: tensors and plain containers only. A pickle that would
    build anything else (e.g. call a function) is refused before it runs, with a one-line :class:`ModelLoadError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"refusing to load {what} {path}: not plain tensors ({first})") from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights file as a state dict: safetensors directly, a pickle through :func:`load_torch_file`."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot read safetensors file {path}: {' '.join(str(exc).split())}") from exc
    state = load_torch_file(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors")
    return state
