"""The ``cola`` entry point: --version, fast --help (no command imported), errors for unknown commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cola_moderation import __version__
from cola_moderation.pipeline.cli.main import COMMANDS, main, parse_args


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cola-moderation {__version__}"


def test_help_lists_every_command_without_importing_any() -> None:
    code = ("import sys\nfrom cola_moderation.pipeline.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'kafka', 'transformers', "
            "'pyarrow') or m.startswith('cola_moderation.pipeline.cli.commands.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    *help_lines, imported = result.stdout.strip().splitlines()
    assert imported == "[]"
    for name, (_, help_text) in COMMANDS.items():
        assert name in "\n".join(help_lines) and help_text.split()[0] in "\n".join(help_lines)


def test_only_the_named_command_is_parsed() -> None:
    args = parse_args(["-v", "classify", "--config", "reference", "a.png"])
    assert (args.command, args.config, args.images, args.verbose) == ("classify", "reference", ["a.png"], 1)


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
