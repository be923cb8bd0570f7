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

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cola_moderation.operators.config import one_of
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


@dataclass(frozen=True)
class Defence:
    """A scoring method: ``escalate`` says which images of a batch the robust scorer re-scores (``[B]`` bool).

    ``always`` is True when every image is re-scored (the moderator then skips work only a gate needs, such as the
    detector's probe view)."""

    name: str
    summary: str
    escalate: Callable[[GateInputs], torch.Tensor]
    always: bool = False


def _none(inputs: GateInputs) -> torch.Tensor:
    return inputs.flagged.new_zeros(inputs.flagged.shape, dtype=inputs.flagged.dtype).bool()


def _every(inputs: GateInputs) -> torch.Tensor:
    return inputs.flagged.new_ones(inputs.flagged.shape, dtype=inputs.flagged.dtype).bool()


def _flagged_or_unsure(inputs: GateInputs) -> torch.Tensor:
    return inputs.flagged | (inputs.clip.margin() < inputs.cascade_margin)


DEFENCES: dict[str, Defence] = {defence.name: defence for defence in (
    Defence("clip", "plain zero-shot CLIP", _none),
    Defence("cola", "COLA on every image (N views, projection, optimal transport)", _every, always=True),
    Defence("cascade", "plain CLIP, COLA only where the detector flags or the CLIP margin is below cola.cascade_margin",
            _flagged_or_unsure),
)}
"""Every method by name, in the order the CLI and the reports list them."""

METHODS: tuple[str, ...] = tuple(DEFENCES)


def get_defence(name: str, *, key: str = "method") -> Defence:
    """The registered method ``name``; a :class:`ConfigError` naming ``key`` and the choices otherwise."""
    if name not in DEFENCES:
        raise ConfigError(f"{key}: {one_of(name, METHODS)}")
    return DEFENCES[name]
