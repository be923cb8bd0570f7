from __future__ import annotations

from datetime import UTC, datetime

from cola_moderation.connectors.records import FilePosition
from cola_moderation.pipeline.cli.demo import ground_truth_report
from cola_moderation.pipeline.runtime.records import OutputRecord
from cola_moderation.pipeline.runtime.summary import RunSummary


def record(label: str, action: str = "allow", flagged: bool = False) -> OutputRecord:
    return OutputRecord(id="x", label=label, score=1.0, topk=((label, 1.0),), action=action, adversarial_score=0.0,
                        suspected_adversarial=flagged, method="clip", model="m", policy_version="1",
                        source=FilePosition("f", 0), processed_at=datetime.now(UTC), latency_ms=0.0)


def test_counts_merge_and_table() -> None:
    first, second = RunSummary(seconds=2.0), RunSummary(seconds=4.0)
    first.add_output("output", record("bag"))
    first.add_output("quarantine", record("bag", "review", True))
    second.add_output("output", record("coat"))
    second.add_dead_letter("decode", "DecodeError")
    first.merge(second)
    assert first.inputs == 4 and first.seconds == 4.0 and first.throughput == 1.0
    assert first.routes == {"output": 2, "quarantine": 1, "dead_letter": 1}
    assert first.labels == {"bag": 2, "coat": 1} and first.flagged == 1
    table = first.table("demo")
    assert "decode: DecodeError" in table and "bag" in table and "1.0 images/s" in table
    assert first.as_dict()["routes"]["dead_letter"] == 1


def test_start_up_and_steady_throughput() -> None:
    summary = RunSummary()
    assert summary.steady_throughput is None
    for _ in range(10):
        summary.add_output("output", record("bag"))
    summary.mark_first_output(4.0)  # the first batch (10 inputs) was written after 4 s of start-up
    for _ in range(30):
        summary.add_output("output", record("bag"))
    summary.mark_first_output(5.0)  # later batches do not move the mark
    summary.seconds = 7.0
    assert summary.first_output_s == 4.0 and summary.first_output_inputs == 10
    assert summary.throughput == 40 / 7.0 and summary.steady_throughput == 10.0  # 30 inputs in the last 3 s
    assert summary.as_dict()["steady_throughput"] == 10.0
    assert "first batch written after 4.0 s (start-up: pool actor, imports, model loading); 10.0 images/s after " \
           "that" in summary.table("run")
    assert "Ray cluster" not in summary.table("run") and "cluster_s" not in summary.as_dict()
    summary.cluster_s = 2.25  # the batch job's Ray start (or join), before its clock
    assert "Ray cluster ready in 2.2 s before that" in summary.table("run") and summary.as_dict()["cluster_s"] == 2.25
    assert "first rows" not in summary.table("run") and "first_rows_s" not in summary.as_dict()
    summary.mark_first_rows(3.25)  # the model stage's first rows at the driver
    summary.mark_first_rows(3.5)  # later rows do not move the mark
    assert "of which 3.2 s until the model's first rows reached the driver" in summary.table("run")
    assert summary.as_dict()["first_rows_s"] == 3.25
    summary.seconds = 4.5  # everything after the first batch came within half a second: no rate to measure
    table = summary.table("run")  # but the start-up is still printed
    assert summary.steady_throughput is None and "images/s after that" not in table
    assert "first batch written after 4.0 s (start-up: pool actor, imports, model loading)\n" in table


def test_ground_truth_report() -> None:
    rows = [{**record("bag").to_json(), "true_label": "bag", "attacked": False},
            {**record("coat").to_json(), "true_label": "bag", "attacked": False},
            {**record("coat", flagged=True).to_json(), "true_label": "bag", "attacked": True},
            {**record("coat").to_json(), "true_label": None, "attacked": False}]
    report = ground_truth_report(rows)
    assert "1/2 labelled correctly (50.0%)" in report
    assert "1/1 flagged (100.0%), 0 still labelled correctly" in report
