"""What an application embeds: build the moderator from a config (a path, a bundled name or a loaded config), apply
the policy, and a callable class for ``ray.data.Dataset.map_batches``. Re-exported by :mod:`cola_moderation`.

Thin wrappers: the operator chain is :class:`~cola_moderation.operators.moderator.Moderator` (``moderate(bytes)``,
``moderate_decoded(batch)``), the policy :class:`~cola_moderation.operators.policy.Policy`, exactly as the CLI jobs use
them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cola_moderation.operators.errors import DecodeError
from cola_moderation.operators.moderator import Moderation, Moderator
from cola_moderation.operators.policy import Decision, Policy
from cola_moderation.pipeline.runtime.config import PipelineConfig, load_config

ConfigLike = PipelineConfig | str | Path
"""A loaded config, a YAML path, or a bundled config name (``reference``, ``moderation``)."""


def as_config(config: ConfigLike) -> PipelineConfig:
    return config if isinstance(config, PipelineConfig) else load_config(config)


def build_moderator(config: ConfigLike = "reference", *, method: str | None = None) -> Moderator:
    """The configured operator chain (decode, CLIP, COLA / cascade, detector), model loaded on ``model.device``.
    ``method`` overrides the config's (``clip``, ``cola``, ``cascade``). Call ``close()`` when done."""
    config = as_config(config)
    return Moderator.from_config(model=config.model, taxonomy=config.taxonomy, decode=config.decode,
                                 method=method or config.method, cola=config.cola, detector=config.detector)


def build_policy(config: ConfigLike = "reference") -> Policy:
    """The config's moderation policy: ``policy.decide(verdict.topk, suspected_adversarial=...)`` -> action."""
    return Policy(as_config(config).policy)


def decide(policy: Policy, verdict: Moderation, record_id: str | None = None) -> Decision:
    """The policy's decision (action, quarantine, reasons, review reasons) for one verdict; ``record_id`` takes part
    in the policy's audit sample."""
    return policy.decide_frames(verdict, record_id=record_id)[1]  # animated: the strictest frame


class ModerateBatch:
    """Callable class for ``Dataset.map_batches`` (Ray Data batch inference): one model per actor, built in the actor.

    ::

        ds.map_batches(ModerateBatch, fn_constructor_kwargs={"config": "reference"},
                       compute=ray.data.ActorPoolStrategy(size=2), batch_size=64, num_cpus=1)

    Reads encoded images (bytes; null or undecodable gives an ``error``) from ``image_column`` and adds the columns
    ``label``, ``score``, ``action``, ``quarantine``, ``adversarial_score``, ``suspected_adversarial``, ``method`` and
    ``error`` (None when the row was moderated; then the scores are NaN and the strings None). Other columns pass
    through; ``drop_image`` drops the image bytes.
    """

    COLUMNS = ("label", "score", "action", "quarantine", "adversarial_score", "suspected_adversarial", "method",
               "error")

    def __init__(self, config: ConfigLike = "reference", *, image_column: str = "image", method: str | None = None,
                 drop_image: bool = False) -> None:
        loaded = as_config(config)
        self.moderator = build_moderator(loaded, method=method)
        self.policy = Policy(loaded.policy)
        self.image_column = image_column
        self.drop_image = drop_image

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch[self.image_column]
        present = [i for i, image in enumerate(images) if image is not None and len(image) > 0]
        verdicts: list[Moderation | DecodeError | None] = [None] * len(images)
        moderated = self.moderator.moderate([bytes(images[i]) for i in present])
        for index, result in zip(present, moderated, strict=True):
            verdicts[index] = result
        columns: dict[str, list[Any]] = {name: [] for name in self.COLUMNS}
        for verdict in verdicts:
            if isinstance(verdict, Moderation):
                verdict, decision = self.policy.decide_frames(verdict)  # animated: the strictest frame
                row: dict[str, Any] = {
                    "label": verdict.label, "score": verdict.score, "action": decision.action,
                    "quarantine": decision.quarantine, "adversarial_score": verdict.adversarial_score,
                    "suspected_adversarial": verdict.suspected_adversarial, "method": verdict.method, "error": None}
            else:
                row = {"label": None, "score": np.nan, "action": None, "quarantine": False, "adversarial_score": np.nan,
                       "suspected_adversarial": False, "method": None,
                       "error": str(verdict) if verdict is not None else "no image"}
            for name in self.COLUMNS:
                columns[name].append(row[name])
        out = {name: value for name, value in batch.items() if not (self.drop_image and name == self.image_column)}
        for name, values in columns.items():
            dtype = {"score": np.float64, "adversarial_score": np.float64, "quarantine": bool,
                     "suspected_adversarial": bool}.get(name, object)
            out[name] = np.array(values, dtype=dtype)
        return out

    def __del__(self) -> None:
        moderator = getattr(self, "moderator", None)
        if moderator is not None:
            moderator.close()
