"""Record types: positions, default ids, dead letters built from exceptions, batch sizes."""

from __future__ import annotations

import dataclasses

import pytest

from cola_moderation.connectors.base import check_route
from cola_moderation.connectors.records import Batch, DeadLetter, FilePosition, InputRecord, KafkaPosition, Route
from cola_moderation.operators.errors import DecodeError


def test_positions_and_default_ids() -> None:
    assert KafkaPosition("t", 1, 9).default_id() == "t:1:9"
    assert KafkaPosition("t", 1, 9).as_dict() == {"topic": "t", "partition": 1, "offset": 9}
    assert FilePosition("/a.parquet", 4).default_id() == "/a.parquet:4"
    assert FilePosition("/a.parquet", 4).as_dict() == {"file": "/a.parquet", "row": 4}


def test_dead_letter_from_exception_and_batch() -> None:
    record = InputRecord("x", b"abc", {}, KafkaPosition("t", 0, 1))
    dead = DeadLetter.from_exception(record, DecodeError("truncated PNG"))
    assert dead.error_fields() == {"error.class": "DecodeError", "error.message": "truncated PNG",
                                   "error.stage": "decode"}
    assert DeadLetter.from_exception(record, ValueError(), stage="sink").error_message == "ValueError()"
    batch = Batch("k", (record,), (dead,))
    assert len(batch) == 2 and batch.nbytes == 6
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.id = "y"  # type: ignore[misc]


def test_check_route() -> None:
    check_route(Route.OUTPUT)
    check_route(Route.QUARANTINE)
    with pytest.raises(ValueError, match="add_dead_letter"):
        check_route(Route.DEAD_LETTER)
    with pytest.raises(ValueError, match="Route.OUTPUT"):
        check_route("output")  # type: ignore[arg-type]
