"""``cola demo [--stream]``: the embedded default, offline: reference model + sample data through the pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from cola_moderation.pipeline.cli.demo import DEFAULT_CONFIG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stream", action="store_true",
                        help="run the stream job through the embedded Kafka broker instead of the batch job")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="pipeline config: a YAML path or a bundled name (default: %(default)s)")
    parser.add_argument("--output", type=Path, help="batch output directory (default: a new temporary directory)")


def run(args: argparse.Namespace) -> int:
    from cola_moderation.pipeline.cli import demo

    if args.stream:
        print(demo.run_stream_demo(args.config))
    else:
        print(demo.run_batch_demo(args.config, output=args.output))
    return 0
