"""Strict JSON at the pipeline's edges: what comes in is bounded, what goes out is standard.

In: :func:`loads_strict` parses untrusted JSON (Kafka envelopes, HTTP bodies and metadata fields) and refuses, with
:class:`JsonInputError`, anything that is not valid UTF-8 JSON, the non-standard tokens ``NaN`` / ``Infinity`` /
``-Infinity``, and nesting deeper than ``max_depth`` (a value of 100,000 ``[`` raises ``RecursionError`` inside the
parser; that is caught here too). The caller turns the error into the record's dead letter or an HTTP 400.

Out: :func:`dumps_strict` writes standard JSON (``allow_nan=False``). Non-finite floats can still reach an output
record from a source that allows them (a Parquet float column, a model score that overflowed); they are written as the
strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` rather than as invalid JSON. :func:`dumps_compact` writes the
same JSON as compact UTF-8 bytes through orjson (~8x the standard library's C encoder on an output record: the Kafka
sink serialises every record on the polling thread) and falls back to :func:`dumps_strict` for what orjson spells
differently or refuses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import orjson

MAX_DEPTH = 32
"""Default nesting limit of untrusted JSON (objects and arrays); real envelopes and metadata use a handful."""


class JsonInputError(ValueError):
    """Untrusted JSON that is invalid, non-standard or too deep. ``code`` names the rule (``bad_json``,
    ``non_finite_number``, ``too_deep``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _refuse_constant(token: str) -> Any:
    raise JsonInputError("non_finite_number", f"non-standard JSON number {token} (NaN and Infinity are refused)")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise JsonInputError("non_finite_number", f"JSON number {token[:40]} overflows to {value}")
    return value


def loads_strict(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON; raises :class:`JsonInputError` (see the module docstring)."""
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except JsonInputError:
        raise
    except RecursionError:
        raise JsonInputError("too_deep", f"JSON nested deeper than the parser's recursion limit "
                                         f"(limit here: {max_depth} levels)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, ints over Python's digit limit
        raise JsonInputError("bad_json", f"not valid JSON: {str(exc)[:200]}") from None
    depth = json_depth(value, stop_after=max_depth)
    if depth > max_depth:
        raise JsonInputError("too_deep", f"JSON nested more than {max_depth} levels deep")
    return value


def json_depth(value: Any, *, stop_after: int | None = None) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, ``[]`` is 1), iteratively; stops counting past ``stop_after``.
    Raises :class:`JsonInputError` for strings that cannot be written back as UTF-8 (lone surrogates such as
    ``"\\ud800"``, which would fail the sink later)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if stop_after is not None and deepest > stop_after:
                return deepest
            if isinstance(item, dict):
                for key in item:
                    _check_text(key)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children)
    return deepest


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonInputError("bad_json", "JSON string with a lone surrogate (\\ud800-\\udfff escape)") from None


def finite_or_string(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"``."""
    if hasattr(value, "dtype") and hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: finite_or_string(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_string(item) for item in value]
    return value


def dumps_strict(value: Any, *, default: Callable[[Any], Any] | None = None, **options: Any) -> str:
    """Standard JSON (``allow_nan=False``); non-finite floats become strings (see the module docstring)."""
    try:
        return json.dumps(value, allow_nan=False, default=default, **options)
    except ValueError:
        return json.dumps(finite_or_string(value), allow_nan=False, default=default, **options)


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
"""Keys as the standard library writes them (``1`` -> ``"1"``); datetimes and dataclasses go to ``default``, as
they do there."""


def has_non_finite(value: Any) -> bool:
    """Whether a NaN or infinite float (a ``float`` or a subclass, such as ``numpy.float64``) is anywhere in the
    dicts, lists and tuples of ``value``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def dumps_compact(value: Any, *, default: Callable[[Any], Any] | None = None, finite: bool = False) -> bytes:
    """``dumps_strict(value, separators=(",", ":"), ensure_ascii=False, default=default).encode()``, through orjson.
    The bytes parse to the same value; floats may be spelled differently (``1e16`` for ``1e+16``). ``finite``: the
    caller has checked that ``value`` holds no non-finite float (:func:`has_non_finite`), which orjson would write as
    ``null``; otherwise this checks. Integers beyond 64 bits, lone surrogates and values ``default`` refuses go
    through :func:`dumps_strict`, which writes or raises exactly as before."""
    if finite or not has_non_finite(value):
        try:
            return orjson.dumps(value, default=default, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:
            pass
    return dumps_strict(value, separators=(",", ":"), ensure_ascii=False, default=default).encode()
