"""The one registry of scoring methods (``method:`` in the config, ``--method`` on the command line).

Every method starts from plain CLIP's pass over a batch (one encoder pass per image, plus the detector's single-pass
signals) and differs in which images the robust scorer (COLA: N views, text subspace, optimal transport) re-scores:

* ``clip``: none (plain zero-shot CLIP, one encoder pass per image);
* ``cola``: all of them (N encoder passes per image);
* ``cascade``: those the detector's pre-screen flags or whose CLIP top-1 minus top-2 probability is below
  ``cola.cascade_margin``, so clean, confidently classified traffic costs little more than plain CLIP.

A new method is one :class:`Defence` and one line in :data:`DEFENCES`; the moderator, the evaluation harness, the
adaptive attacks (which differentiate through the same gate) and the CLI choices all read this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cola_moderation.operators.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from cola_moderation.operators.defences.zeroshot import Scores


@dataclass(frozen=True)
class GateInputs:
    """What a gate may look at for a batch of ``B`` images: plain CLIP's ``clip`` scores, the detector's single-pass
    ``adversarial`` scores ``[B]`` and ``flagged`` ``[B]`` bool, and the configured ``cascade_margin``."""

    clip: Scores
    adversarial: torch.Tensor
    flagged: torch.Tensor
    cascade_margin: float


class Defence(Protocol):
    """A scoring method: ``escalate`` says which images of a batch the robust scorer re-scores (``[B]`` bool).

    ``always`` is True when every image is re-scored (the moderator then skips work only a gate needs, such as the
    detector's probe view)."""

    @property
    def name(self) -> str: ...

    @property
    def summary(self) -> str: ...

    @property
    def always(self) -> bool: ...

    def escalate(self, inputs: GateInputs) -> torch.Tensor: ...


@dataclass(frozen=True)
class PlainClip:
    name: str = "clip"
    summary: str = "plain zero-shot CLIP"
    always: bool = False

    def escalate(self, inputs: GateInputs) -> torch.Tensor:
        import torch

        return torch.zeros_like(inputs.flagged, dtype=torch.bool)


@dataclass(frozen=True)
class Cola:
    name: str = "cola"
    summary: str = "COLA on every image (N views, projection, optimal transport)"
    always: bool = True

    def escalate(self, inputs: GateInputs) -> torch.Tensor:
        import torch

        return torch.ones_like(inputs.flagged, dtype=torch.bool)


@dataclass(frozen=True)
class Cascade:
    name: str = "cascade"
    summary: str = "plain CLIP, COLA only where the detector flags or the CLIP margin is below cola.cascade_margin"
    always: bool = False

    def escalate(self, inputs: GateInputs) -> torch.Tensor:
        return inputs.flagged | (inputs.clip.margin() < inputs.cascade_margin)


DEFENCES: dict[str, Defence] = {defence.name: defence for defence in (PlainClip(), Cola(), Cascade())}
"""Every method by name, in the order the CLI and the reports list them."""

METHODS: tuple[str, ...] = tuple(DEFENCES)


def get_defence(name: str, *, key: str = "method") -> Defence:
    """The registered method ``name``; a :class:`ConfigError` naming ``key`` and the choices otherwise."""
    try:
        return DEFENCES[name]
    except KeyError:
        raise ConfigError(f"{key}: must be one of {', '.join(METHODS)}, got {name!r}") from None
