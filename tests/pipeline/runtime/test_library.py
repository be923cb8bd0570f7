"""The library API without Ray: build the moderator and policy from a bundled config name, and ModerateBatch on a
numpy batch as Ray Data hands it over (bytes, a missing image, garbage)."""

from __future__ import annotations

import numpy as np
import pytest

from cola_moderation.pipeline.runtime.library import ModerateBatch, build_moderator, build_policy, decide
from cola_moderation.resources import samples_dir


@pytest.fixture(scope="module")
def moderate() -> ModerateBatch:
    return ModerateBatch("reference", method="clip")


def test_moderate_batch_adds_typed_columns_and_error_rows(moderate: ModerateBatch) -> None:
    images = samples_dir() / "images"
    batch = {"id": np.array(["a", "b", "c", "d"], dtype=object),
             "image": np.array([(images / "trouser.png").read_bytes(), None, b"not an image",
                                (images / "bag.png").read_bytes()], dtype=object)}
    out = moderate(batch)
    assert list(out["id"]) == ["a", "b", "c", "d"] and "image" in out
    assert list(out["label"]) == ["trouser", None, None, "bag"]
    assert out["score"].dtype == np.float64 and np.isnan(out["score"][1]) and 0.5 < out["score"][0] <= 1.0
    assert out["quarantine"].dtype == bool and out["suspected_adversarial"].dtype == bool
    assert out["error"][0] is None and out["error"][3] is None and out["error"][1] == "no image"
    assert isinstance(out["error"][2], str) and out["error"][2]  # the decoder's message
    assert set(out["method"][[0, 3]]) == {"clip"} and set(out["action"][[0, 3]]) <= {"allow", "review", "block"}


def test_drop_image_and_another_image_column() -> None:
    stage = ModerateBatch("reference", image_column="bytes", method="clip", drop_image=True)
    out = stage({"bytes": np.array([(samples_dir() / "images" / "sandal.jpg").read_bytes()], dtype=object)})
    assert "bytes" not in out and out["label"][0] == "sandal"


def test_build_moderator_and_policy_by_name() -> None:
    moderator = build_moderator("reference", method="clip")
    try:
        (verdict,) = moderator.moderate([(samples_dir() / "images" / "coat.png").read_bytes()])
    finally:
        moderator.close()
    assert not isinstance(verdict, Exception) and verdict.label == "coat" and verdict.method == "clip"
    decision = decide(build_policy("reference"), verdict)
    assert decision.action in ("allow", "review", "block") and decision.quarantine == (decision.action == "review")
