"""The root package: light to import, every public name resolves, one version."""

from __future__ import annotations

import subprocess
import sys

import cola_moderation


def test_import_is_light_and_names_load_on_first_use() -> None:
    code = ("import sys, cola_moderation as cm\n"
            "before = sorted(m for m in ('torch', 'ray', 'kafka', 'transformers') if m in sys.modules)\n"
            "cm.Policy\n"
            "after = sorted(m for m in ('torch', 'ray', 'kafka') if m in sys.modules)\n"
            "print(before, after, cm.__version__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.split("]")[0] == "["  # nothing heavy before a name is used
    assert "'ray'" not in result.stdout and "'kafka'" not in result.stdout  # the policy needs neither


def test_every_public_name_resolves() -> None:
    assert set(cola_moderation.__all__) == {"__version__", *cola_moderation._EXPORTS}
    for name in cola_moderation.__all__:
        assert getattr(cola_moderation, name) is not None, name
    assert issubclass(cola_moderation.DecodeError, cola_moderation.ColaError)
    assert "ModerateBatch" in dir(cola_moderation)


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        cola_moderation.nope  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
