from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cola_moderation.pipeline.research.fashion_mnist import DatasetError
from cola_moderation.pipeline.research.reviewed import (
    decision_thresholds,
    label_score,
    latest_per_id,
    load_reviewed,
    source_images,
)


def row(record_id: str, final: str | None, scores: dict[str, float], decided: int = 0) -> dict[str, object]:
    return {"id": record_id, "final_label": final, "decided_at": decided, "revision": 1,
            "topk": [{"label": k, "score": v} for k, v in scores.items()]}


def test_thresholds_reach_the_target_precision_with_the_most_recall() -> None:
    rows = [row("a", "weapons", {"weapons": 0.9}), row("b", "weapons", {"weapons": 0.7}),
            row("c", "safe", {"weapons": 0.6, "safe": 0.4}), row("d", "weapons", {"weapons": 0.5}),
            row("e", "safe", {"safe": 0.9}), row("f", "safe", {"weapons": 0.3, "safe": 0.7})]
    (weapons, safe) = decision_thresholds(rows, ["weapons", "safe"], precision=0.75)
    # At 0.5: a, b, c, d flagged, 3 of 4 right (0.75) and all 3 weapons found; at 0.3 precision drops to 0.6.
    assert (weapons.threshold, weapons.flagged, weapons.positives, weapons.reviewed) == (0.5, 4, 3, 6)
    assert weapons.precision == pytest.approx(0.75) and weapons.recall == pytest.approx(1.0)
    assert safe.threshold == 0.4 and safe.recall == pytest.approx(1.0) and safe.precision == pytest.approx(1.0)
    (strict,) = decision_thresholds(rows, ["weapons"], precision=1.0)
    assert (strict.threshold, strict.recall) == (0.7, pytest.approx(2 / 3))
    (none,) = decision_thresholds([row("x", "safe", {"weapons": 0.9})], ["weapons"], precision=0.5)
    assert none.threshold is None and none.positives == 0
    assert label_score(rows[4], "weapons") == 0.0  # outside the top-k


def test_ties_are_flagged_together() -> None:
    rows = [row("a", "weapons", {"weapons": 0.8}), row("b", "safe", {"weapons": 0.8}),
            row("c", "weapons", {"weapons": 0.9})]
    (weapons,) = decision_thresholds(rows, ["weapons"], precision=0.9)
    assert (weapons.threshold, weapons.flagged) == (0.9, 1)  # 0.8 would take a and b: 2 of 3


def test_latest_decision_per_id_wins() -> None:
    rows = [row("a", "cat", {}, 1), row("b", "dog", {}, 2), row("a", "car", {}, 3)]
    assert [(r["id"], r["final_label"]) for r in latest_per_id(rows)] == [("b", "dog"), ("a", "car")]


def test_images_come_from_the_source_rows(tmp_path: Path) -> None:
    from tests.pipeline.jobs.review.data import png

    images = tmp_path / "in.parquet"
    (tmp_path / "pic.png").write_bytes(png(5))
    pq.write_table(pa.table({"image": [png(1), png(2)]}), images)
    paths = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"image": ["pic.png", "../../etc/passwd"]}), paths)
    skipped = {"no_input_file": 0, "unreadable": 0}
    got = source_images([{"file": str(images), "row": 1}, {"topic": "t", "partition": 0, "offset": 1},
                         {"file": str(paths), "row": 0}, {"file": str(paths), "row": 1},
                         {"file": str(tmp_path / "gone.parquet"), "row": 0}, {"file": str(images), "row": 9}],
                        image_column="image", skipped=skipped, max_bytes=1 << 20)
    assert got[0] == png(2) and got[2] == png(5)
    assert got[1] is None and got[3] is None and got[4] is None and got[5] is None  # traversal refused
    assert skipped == {"no_input_file": 1, "unreadable": 3}


def test_load_reviewed_refuses_other_directories(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="neither a decisions dataset"):
        load_reviewed(tmp_path, label_names=("cat",), size=32)
