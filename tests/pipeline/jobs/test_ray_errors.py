"""Turning Ray's wrappers back into our one-line errors."""

from __future__ import annotations

import pytest
from ray.exceptions import RayTaskError

from cola_moderation.operators.errors import ConfigError
from cola_moderation.pipeline.jobs.ray_errors import cola_cause, raise_ours


def test_finds_our_error_inside_a_ray_task_error() -> None:
    ours = ConfigError("parquet.id_column: no column 'key' in part-0.parquet")
    wrapped = RayTaskError("read_task", "Traceback ...", ours)
    assert cola_cause(wrapped) is ours
    with pytest.raises(ConfigError, match="no column 'key'") as info:
        raise_ours(wrapped)
    assert info.value.__cause__ is None  # one line: not chained to Ray's wrapper


def test_follows_cause_and_context_chains_and_stops_on_cycles() -> None:
    ours = ConfigError("bad")
    try:
        try:
            raise ours
        except ConfigError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as outer:
        assert cola_cause(outer) is ours
    cyclic = RuntimeError("a")
    cyclic.__context__ = RuntimeError("b")
    cyclic.__context__.__context__ = cyclic
    assert cola_cause(cyclic) is None
    raise_ours(cyclic)  # nothing of ours: returns, the caller re-raises the original
