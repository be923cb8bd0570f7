"""The matching stage inside the worker (the one stage stream, batch and HTTP share), on the reference model: a
bank built with ``cola hash`` from 50 test images matches them, their JPEG q75 re-encodes and their 8/255 PGD copies,
and none of 200 other test images (the jobs' tests check all 1,000); the bank's action goes through the policy;
``skip_model_on_match``."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from cola_moderation.connectors.records import FilePosition, InputRecord, Route
from cola_moderation.pipeline.runtime.config import PipelineConfig, parse_config
from cola_moderation.pipeline.runtime.records import OutputRecord, json_schema, to_columns
from cola_moderation.pipeline.runtime.worker import ModerationWorker
from cola_moderation.resources import config_path
from tests.operators.matching.known_images import KnownImages, known_images, reference_config, write_bank_with_cola_hash


@pytest.fixture(scope="module")
def images() -> KnownImages:
    return known_images()


@pytest.fixture(scope="module")
def bank(images: KnownImages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bank_with_cola_hash(images.banked, tmp_path_factory.mktemp("bank"))


def config(bank: Path, **options: object) -> PipelineConfig:
    return parse_config(reference_config(bank, **options), base_dir=config_path("reference").parent)  # type: ignore[arg-type]


def records(prefix: str, payloads: list[bytes]) -> list[InputRecord]:
    return [InputRecord(f"{prefix}-{i}", data, {}, FilePosition(prefix, i)) for i, data in enumerate(payloads)]


def outputs(worker: ModerationWorker, prefix: str, payloads: list[bytes]) -> list[OutputRecord]:
    result = worker.process(records(prefix, payloads), received_at=0.0)
    assert not result.dead_letters
    return [routed.record for routed in result.routed]


@pytest.mark.slow
def test_bank_matches_copies_and_nothing_else(bank: Path, images: KnownImages) -> None:
    worker = ModerationWorker(config(bank))
    schema = json_schema()
    try:
        for prefix, payloads, signal in (("banked", images.banked, "md5"), ("jpeg75", images.jpeg75, "pdq"),
                                         ("pgd8", images.pgd8, "pdq")):
            got = outputs(worker, prefix, payloads)
            matched = [r for r in got if r.match is not None]
            assert len(matched) >= 0.95 * len(payloads), (prefix, len(matched))
            for record in matched:
                assert record.action == "block" and record.decided_by == "match"
                assert record.match is not None and record.match["bank"] == "known"
                assert record.match["signal_type"] == signal and record.match["label"] == "known"
                assert 0 <= record.match["distance"] <= 31
                assert record.topk[0][0] != "known"  # the model ran: its label stays
                jsonschema.validate(record.to_json(), schema)
            if prefix == "banked":
                assert len(matched) == 50 and {r.match["distance"] for r in matched} == {0}  # type: ignore[index]
        others = outputs(worker, "other", images.others[:200])
        assert [r.id for r in others if r.match is not None] == []
        assert {r.decided_by for r in others} == {"model"}
        jsonschema.validate(others[0].to_json(), schema)
        assert to_columns(others[:2] + matched[:2])["match"].null_count == 2
    finally:
        worker.close()


@pytest.mark.slow
def test_skip_model_on_match_routes_on_the_bank_alone(bank: Path, images: KnownImages) -> None:
    worker = ModerationWorker(config(bank, skip_model_on_match=True, action="review"))
    try:
        result = worker.process(records("mixed", [images.jpeg75[0], images.others[0], images.banked[1]]))
        first, other, exact = (routed for routed in result.routed)
        assert first.route == Route.QUARANTINE and exact.route == Route.QUARANTINE  # review is quarantined
        for routed in (first, exact):
            record = routed.record
            assert record.decided_by == "match" and record.action == "review"
            assert record.label == "known" and record.topk == (("known", 1.0),) and record.adversarial_score == 0.0
            jsonschema.validate(record.to_json(), json_schema())
        assert other.record.match is None and other.record.decided_by == "model"
        assert OutputRecord.from_json(first.record.to_json()).to_json() == first.record.to_json()
    finally:
        worker.close()
