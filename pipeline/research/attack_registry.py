"""The one registry of attacks: what ``cola eval --attack`` accepts and what the adaptive suite crafts.

* :data:`EVAL_ATTACKS`: the command-line choices, each with its threat model, the method it is crafted on and its
  loss (as reports name them). A suite choice (``apgd-ce``, ``apgd-dlr``, ``adaptive``, ``detector-aware``) lists the
  :data:`SUITE_ATTACKS` it runs against every deployed method, end to end
  (:mod:`cola_moderation.pipeline.research.evaluation.suite`).
* :data:`SUITE_ATTACKS`: the per-method attacks of the suite, by algorithm (:mod:`~.attacks`) and loss.

A new attack is one entry here (and its algorithm in :mod:`cola_moderation.pipeline.research.attacks` if it needs a
new one); the CLI choices, the harness, the suite and the reports read these tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DETECTOR_AWARE = "detector-aware"


@dataclass(frozen=True)
class EvalAttack:
    """A ``cola eval --attack`` choice. ``target``/``loss``: what a single attack is crafted on (``None`` for the
    clean pass and for suites, which attack every method); ``suite``: the :data:`SUITE_ATTACKS` a suite runs (``None``
    for a single attack)."""

    name: str
    threat_model: str | None
    target: str | None = None
    loss: str | None = None
    suite: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SuiteAttack:
    """One attack the suite runs against each deployed method: ``kind`` the algorithm, ``loss`` its loss."""

    name: str
    kind: Literal["apgd", "pgd"]
    loss: Literal["ce", "dlr", "cw"]


SUITE_ATTACKS: dict[str, SuiteAttack] = {attack.name: attack for attack in (
    SuiteAttack("apgd-ce", "apgd", "ce"),
    SuiteAttack("apgd-dlr", "apgd", "dlr"),
    SuiteAttack("pgd-ce", "pgd", "ce"),
    SuiteAttack("pgd-cw", "pgd", "cw"),
)}

EVAL_ATTACKS: dict[str, EvalAttack] = {attack.name: attack for attack in (
    EvalAttack("none", None),
    EvalAttack("pgd", "gray-box", target="clip", loss="cross-entropy of plain CLIP"),
    EvalAttack("cw", "gray-box", target="clip", loss="CW margin of plain CLIP (max wrong - true logit)"),
    EvalAttack("eot-pgd", "adaptive", target="cola",
               loss="cross-entropy of COLA's softmax(-d / T), EOT over fresh views"),
    EvalAttack("apgd-ce", "adaptive", suite=("apgd-ce",)),
    EvalAttack("apgd-dlr", "adaptive", suite=("apgd-dlr",)),
    EvalAttack("adaptive", "adaptive", suite=tuple(SUITE_ATTACKS)),
    # only the detector-aware attack on the cascade (e.g. to compare detector settings)
    EvalAttack(DETECTOR_AWARE, DETECTOR_AWARE, suite=()),
)}

SUITE_NAMES: tuple[str, ...] = tuple(name for name, attack in EVAL_ATTACKS.items() if attack.suite is not None)
"""The choices that run the suite."""
