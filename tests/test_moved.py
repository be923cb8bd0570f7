"""Pre-layout import paths (users' code, Serve configs, manifests written before 2026-12-03) keep working."""

from __future__ import annotations

import importlib
import subprocess
import sys

from cola_moderation._moved import MOVED, new_name

CHECK = """
import importlib, sys, warnings
from cola_moderation._moved import MOVED
problems = []
for old, new in sorted(MOVED.items()):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module("cola_moderation." + old)
    if module is not importlib.import_module("cola_moderation." + new):
        problems.append(f"{old}: not the module {new}")
    if not any(w.category is DeprecationWarning and f"moved to cola_moderation.{new}" in str(w.message)
               for w in caught):
        problems.append(f"{old}: no DeprecationWarning naming {new}")
print("\\n".join(problems))
sys.exit(1 if problems else 0)
"""


def test_every_old_path_is_the_new_module() -> None:
    # a fresh interpreter: the old names must resolve on first import, not because the new ones were loaded first
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert len(MOVED) > 30


def test_submodules_of_moved_packages_and_stable_paths() -> None:
    assert new_name("cola_moderation.pipeline.evaluation.harness") == \
        "cola_moderation.pipeline.research.evaluation.harness"
    assert new_name("cola_moderation.pipeline.commands.classify") == "cola_moderation.pipeline.cli.commands.classify"
    assert new_name("cola_moderation.pipeline.research.evaluation.harness") is None  # current paths are untouched
    assert new_name("cola_moderation.operators.detector.score") is None
    from cola_moderation.operators.detector import AdversarialDetector  # the old module's names, from the package
    from cola_moderation.pipeline.serve_app import app_builder

    assert AdversarialDetector.__module__ == "cola_moderation.operators.detector.score"
    assert callable(app_builder)
    guard = importlib.import_module("cola_moderation.pipeline.http_guard")  # the old manifests' proxy hook
    assert guard is importlib.import_module("cola_moderation.pipeline.jobs.http_guard")
