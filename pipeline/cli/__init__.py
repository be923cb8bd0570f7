"""The ``cola`` command line: one module per command under ``commands/`` (imported lazily), the demo. Nothing
imports this package except the console script and tests.
"""

from cola_moderation.pipeline.cli.main import main

__all__ = ["main"]
