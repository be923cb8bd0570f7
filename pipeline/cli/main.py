"""The ``cola`` command line. Each subcommand lives in ``pipeline/cli/commands/<name>.py`` and is imported only when
used, so ``cola --help`` stays fast and commands needing Ray or Kafka do not slow down the others."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from cola_moderation import __version__
from cola_moderation.operators.errors import ColaError

# name -> (module under cola_moderation.pipeline.cli.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "classify": ("classify", "classify image files; one JSON line per image on stdout"),
    "train-reference": ("train_reference", "retrain the bundled reference CLIP on Fashion-MNIST"),
    "batch": ("batch", "Parquet in -> Parquet out on Ray (resumable)"),
    "stream": ("stream", "Kafka in -> Kafka out (output, quarantine, dead-letter) on Ray Serve, at least once"),
    "serve": ("serve", "HTTP moderation service on Ray Serve (autoscaled replicas) until Ctrl-C"),
    "demo": ("demo", "the embedded default: sample data through the pipeline, offline, with the reference model"),
    "broker": ("broker", "run the embedded Kafka-compatible broker (Tansu) on 127.0.0.1 until Ctrl-C"),
    "finetune": ("finetune", "adversarial fine-tuning of the CLIP image tower (TeCoA or FARE); robust checkpoint"),
    "eval": ("eval", "robust accuracy of CLIP / COLA / cascade under L-inf attacks; JSON report and plot"),
    "calibrate": ("calibrate", "fit the detector's centres and threshold on clean images for a target FPR"),
    "review": ("review", "reviewer console + HTTP API over a quarantine route; decisions to the decisions route"),
    "hash": ("hash", "PDQ + MD5 of image files (to build hash banks for matching.banks)"),
    "bank": ("bank", "hash banks: `cola bank add BANK --input PARQUET` appends reviewed items"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``cola`` parser. Every command is listed (help text from :data:`COMMANDS`), but only ``command``'s module
    is imported and given its arguments: ``cola --help`` imports no command at all."""
    parser = argparse.ArgumentParser(prog="cola", description="Robust zero-shot content moderation (CLIP + COLA).")
    parser.add_argument("--version", action="version", version=f"cola-moderation {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging on stderr, Ray's INFO logs included (-vv: debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"cola_moderation.pipeline.cli.commands.{module_name}")
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def command_name(argv: Sequence[str]) -> str | None:
    """The subcommand in ``argv``: the first word that is not a top-level option (those take no values)."""
    return next((word for word in argv if not word.startswith("-")), None)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a ``cola`` command line (without the program name), importing only the command it names."""
    argv = list(argv)
    return build_parser(command_name(argv)).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    if not args.verbose:
        # Library progress bars (weight loading, shard writing) are noise on a CLI whose stdout is JSON lines.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # Serve's components (controller, replicas, handles in our actors) log INFO lines to stderr, which Ray forwards
        # to ours; their log files under /tmp/ray keep them. Inherited by the processes of a private cluster.
        os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI colour in the worker lines Ray forwards to a file/pipe
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.run(args))
    except ColaError as exc:
        print(f"cola {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
