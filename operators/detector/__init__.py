"""The adversarial-upload detector: its score (``score``) and its calibration file kept beside the model
(``calibration``: format, lookup and application; fitting lives in :mod:`cola_moderation.pipeline.research`).
"""

from typing import Any

_SCORE_NAMES = ("AdversarialDetector", "embedding_shift", "secret_noise_seed", "seed_is_secret")
__all__ = list(_SCORE_NAMES)


def __getattr__(name: str) -> Any:
    """``from cola_moderation.operators.detector import AdversarialDetector`` (the pre-layout module path) keeps
    working; imported on first use so that loading a config (which reads ``calibration``) does not import torch."""
    if name in _SCORE_NAMES:
        from cola_moderation.operators.detector import score

        return getattr(score, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
