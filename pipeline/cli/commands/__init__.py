"""Subcommands of the ``cola`` CLI: each module defines ``add_arguments(parser)`` and ``run(args) -> int``."""
