"""``cola stream --config C [--bootstrap HOST:PORT] [--max-records N] [--idle-timeout S]``: Kafka -> Kafka on Ray."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TypeVar

from cola_moderation.pipeline.runtime.config import load_config

T = TypeVar("T")


def positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(text: str) -> T:
        value = kind(text)
        if not value > 0:  # type: ignore[operator]
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML config")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: kafka.bootstrap_servers)")
    parser.add_argument("--max-records", type=positive(int), help="stop once at least N inputs were written")
    parser.add_argument("--idle-timeout", type=positive(float), help="stop after S seconds without input")
    parser.add_argument("--address", help="Ray cluster address (default: ray.address, RAY_ADDRESS, or a private one)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from cola_moderation.pipeline.jobs.stream import run_stream_job, stream_endpoint

    config = load_config(args.config)
    stream_endpoint(config, bootstrap_servers=args.bootstrap).check()  # one line before Ray and the model load

    summary = run_stream_job(config, bootstrap_servers=args.bootstrap, max_records=args.max_records,
                             idle_timeout_s=args.idle_timeout, address=args.address)
    print(json.dumps(summary.as_dict()) if args.json else summary.table("cola stream"))
    return 0
