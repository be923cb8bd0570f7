"""Strict JSON out: the orjson fast path writes what the standard library's strict path writes."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cola_moderation.connectors.json_codec import dumps_compact, dumps_strict, has_non_finite, loads_strict
from cola_moderation.pipeline.runtime.records import json_default


def strict(value: Any) -> bytes:
    return dumps_strict(value, separators=(",", ":"), ensure_ascii=False, default=json_default).encode()


ORDINARY = [
    {"id": "a", "score": 0.912345, "topk": [{"label": "cat", "score": 0.9}, {"label": "dog", "score": 0.1}],
     "ok": True, "none": None, "n": -17, "text": "é 日本 \u2028 \"quoted\" \\ \x00 \x1f", "empty": {}, "list": []},
    [1, 2.5, "x", (3, 4)],
    {"when": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC), "day": date(2026, 1, 2), "path": Path("/a/b"),
     "blob": b"\xffab", "np": np.float32(0.5), "npi": np.int64(7), "big": 2**63 - 1},
]


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_values_are_written_byte_for_byte_as_the_standard_library_writes_them(value: Any) -> None:
    assert dumps_compact(value, default=json_default) == strict(value)


@pytest.mark.parametrize("value", [
    {"score": float("nan"), "m": {"a": [float("inf"), -float("inf"), np.float32("nan")]}},
    [np.float64("nan")],  # a float subclass
    {"deep": [[[{"x": float("-inf")}]]]},
    [np.float32("nan")],  # not a float: the default writes it
])
def test_non_finite_floats_are_strings_anywhere(value: Any) -> None:
    out = dumps_compact(value, default=json_default)
    assert b"null" not in out
    assert loads_strict(out) == loads_strict(strict(value))


def test_what_orjson_refuses_or_spells_differently_goes_through_the_standard_library() -> None:
    huge = {"n": 2**70, 1: "int key", None: "none key", 2.5: "float key"}
    assert dumps_compact(huge, default=json_default) == strict(huge)
    assert json.loads(dumps_compact({"f": 1e16})) == {"f": 1e16}
    with pytest.raises(UnicodeEncodeError):
        dumps_compact({"s": "\ud800"}, default=json_default)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        dumps_compact({"o": object()}, default=json_default)
    deep: Any = "x"
    for _ in range(400):  # past orjson's nesting limit, within the standard library's
        deep = [deep]
    assert dumps_compact(deep) == strict(deep)


def test_finite_true_skips_the_search_and_is_only_for_values_known_finite() -> None:
    assert not has_non_finite({"a": [1.0, {"b": (2.0,)}], "c": "NaN"})
    assert has_non_finite({"a": [1.0, {"b": (float("inf"),)}]})
    # the caller's word is taken: a NaN it missed is written as orjson writes it (which is why callers check)
    assert dumps_compact({"a": float("nan")}, finite=True) == b'{"a":null}'
    assert dumps_compact({"a": float("nan")}) == b'{"a":"NaN"}'
