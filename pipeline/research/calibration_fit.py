"""Fitting the detector's calibration (``cola calibrate``): centres, scales and threshold measured on clean images
for a target false-positive rate. The file format and how a calibration is applied at load time are in
:mod:`cola_moderation.operators.detector.calibration`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from cola_moderation.operators.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from cola_moderation.operators.moderator import Moderator


def fit_calibration(moderator: Moderator, pixels: torch.Tensor, *, fpr: float, method: str,
                    batch_size: int = 256, rounds: int = 3) -> tuple[dict[str, float], dict[str, Any]]:
    """Centres, scales and threshold for ``moderator``'s detector from clean ``[N, 3, S, S]`` pixels, so that a
    share of at most ``fpr`` of them is flagged by ``method``'s verdict.

    Centres are the clean medians of each enabled signal (the noise probe's log shift, the probe view's and COLA's
    view shifts), scales their standard deviations; then the threshold is set to flag at most ``floor(fpr * N)``
    clean images, re-fitted ``rounds`` times because the cascade's escalations (and so its final scores) depend on
    the threshold. Returns (values, measured) for a :class:`DetectorCalibration`.
    """
    import torch

    if not 0 < fpr < 1:
        raise ConfigError(f"--fpr must be in (0, 1), got {fpr}")
    config = moderator.detector.config
    noise, probe, view = [], [], []
    with torch.inference_mode():
        for start in range(0, pixels.shape[0], batch_size):
            x = pixels[start : start + batch_size]
            screen = moderator.prescreen(x, method=method)
            if screen.noise_shift is not None:
                noise.append(screen.noise_shift.float().clamp_min(1e-12).log().cpu())
            if screen.probe_shift is not None:
                probe.append(screen.probe_shift.float().cpu())
            if method != "clip":
                view.append(moderator.cola.score_pixels(moderator.backbone, x, known=screen.features.unsqueeze(1))
                            .view_shift.float().cpu())
    values: dict[str, float] = {}
    if noise:
        log_shift = torch.cat(noise)
        values["noise_shift_center"] = float(log_shift.median())
        values["noise_shift_scale"] = max(float(log_shift.std()), 1e-6)
    if probe:
        values["probe_shift_center"] = float(torch.cat(probe).median())
    if view and moderator.cola.view_count > 1:
        shift = torch.cat(view)
        values["view_shift_center"] = float(shift.median())
        values["view_shift_scale"] = max(float(shift.std()), 1e-6)
    allowed = math.floor(fpr * pixels.shape[0])

    def verdicts(threshold: float) -> tuple[torch.Tensor, float]:
        moderator.detector.config = config.model_copy(update={**values, "threshold": threshold})
        parts = [moderator.verdict(pixels[start : start + batch_size], method=method)
                 for start in range(0, pixels.shape[0], batch_size)]
        scores = torch.cat([v.adversarial_scores.float().cpu() for v in parts])
        return scores, float(torch.cat([v.suspected.cpu() for v in parts]).double().mean())

    best = (math.inf, 0.0)  # (threshold, flagged share) of the best round
    try:
        scores, _ = verdicts(config.threshold)
        for _ in range(rounds):
            ranked = scores.double().sort(descending=True).values
            threshold = min(1.0, math.nextafter(float(ranked[allowed]), math.inf)) if allowed < len(ranked) else 0.0
            scores, flagged = verdicts(threshold)
            if flagged <= fpr and (best[0] == math.inf or flagged > best[1]):
                best = (threshold, flagged)
    finally:
        moderator.detector.config = config
    if best[0] == math.inf:
        raise ConfigError(f"calibration: no threshold flags at most {fpr:.1%} of the clean images")
    values["threshold"] = best[0]
    return values, {"flagged": round(best[1], 6), "images": int(pixels.shape[0])}
