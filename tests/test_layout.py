"""The import direction between the rooms, read from the checkout's real folders (not the cola_moderation/ links).

pipeline -> connectors -> operators, never back up; inside pipeline: cli -> {jobs, research, runtime}, jobs ->
runtime, research and runtime never import each other, nothing imports cli; connectors/local (the embedded broker
and developer tools) only from the CLI, tests and benchmarks. Every import counts, including the lazy ones inside
functions and those under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("operators", "connectors", "pipeline")
PREFIX = "cola_moderation."

# (importer room, imported room) pairs that are forbidden; a room is the longest matching dotted prefix below.
ROOMS = (
    "operators", "connectors.local", "connectors",
    "pipeline.cli", "pipeline.jobs", "pipeline.research", "pipeline.runtime", "pipeline",
)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "operators": ("connectors", "connectors.local", "pipeline", "pipeline.cli", "pipeline.jobs", "pipeline.research",
                  "pipeline.runtime"),
    "connectors": ("connectors.local", "pipeline", "pipeline.cli", "pipeline.jobs", "pipeline.research",
                   "pipeline.runtime"),
    "connectors.local": ("pipeline", "pipeline.cli", "pipeline.jobs", "pipeline.research", "pipeline.runtime"),
    "pipeline.runtime": ("pipeline.cli", "pipeline.jobs", "pipeline.research", "connectors.local"),
    "pipeline.research": ("pipeline.cli", "pipeline.jobs", "pipeline.runtime", "connectors.local"),
    "pipeline.jobs": ("pipeline.cli", "pipeline.research", "connectors.local"),
    # pipeline/ itself holds only the package marker and the stable alias of the Serve app (serve_app.py)
    "pipeline": ("pipeline.cli", "pipeline.research", "pipeline.runtime", "connectors.local"),
    "pipeline.cli": (),
}


def room_of(module: str) -> str | None:
    """The room of a dotted name relative to ``cola_moderation`` (``pipeline.jobs.batch`` -> ``pipeline.jobs``)."""
    for room in ROOMS:
        if module == room or module.startswith(room + "."):
            return room
    return None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, imported module relative to ``cola_moderation``) for every import of our package in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
                names = [PREFIX + target]
            else:
                names = [node.module or ""]
            # `from cola_moderation.pipeline import cli` imports the submodule cli
            names += [f"{names[0]}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith(PREFIX):
                yield node.lineno, name[len(PREFIX):]


def violations(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            importer = room_of(module)
            assert importer is not None, module
            for line, imported in imports_of(path, module):
                target = room_of(imported)
                if target is not None and target in FORBIDDEN[importer]:
                    found.append(f"{path.relative_to(root)}:{line}: {importer} must not import {target} ({imported})")
    return sorted(set(found))


def test_the_rooms_import_only_in_the_allowed_direction() -> None:
    assert violations(REPO) == []


def test_the_rule_reads_real_folders_not_the_links() -> None:
    # the package's links point at the folders this test reads; a tool that skips symlinks sees the same tree
    for package in PACKAGES:
        link = REPO / "cola_moderation" / package
        assert link.is_symlink() and link.resolve() == (REPO / package).resolve()


def test_a_planted_violation_is_reported(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "runtime").mkdir()
    (tmp_path / "pipeline" / "runtime" / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "runtime" / "worker.py").write_text(
        "def f():\n    from cola_moderation.pipeline.research.attacks import pgd_linf\n")
    (tmp_path / "operators" / "moderator.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cola_moderation.connectors import records\n")
    (tmp_path / "pipeline" / "jobs").mkdir()
    (tmp_path / "pipeline" / "jobs" / "batch.py").write_text("from ..cli import main\n")
    assert violations(tmp_path) == [
        "operators/moderator.py:3: operators must not import connectors (connectors)",
        "operators/moderator.py:3: operators must not import connectors (connectors.records)",
        "pipeline/jobs/batch.py:1: pipeline.jobs must not import pipeline.cli (pipeline.cli)",
        "pipeline/jobs/batch.py:1: pipeline.jobs must not import pipeline.cli (pipeline.cli.main)",
        "pipeline/runtime/worker.py:2: pipeline.runtime must not import pipeline.research "
        "(pipeline.research.attacks)",
        "pipeline/runtime/worker.py:2: pipeline.runtime must not import pipeline.research "
        "(pipeline.research.attacks.pgd_linf)",
    ]
