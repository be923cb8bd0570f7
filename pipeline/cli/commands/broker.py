"""``cola broker [--port 9092]``: run the embedded Kafka-compatible broker (Tansu, memory storage) in the foreground
on 127.0.0.1 until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from cola_moderation.connectors.local.broker import EmbeddedBroker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=9092, help="TCP port on 127.0.0.1 (default 9092; 0 = pick one)")


def run(args: argparse.Namespace) -> int:
    broker = EmbeddedBroker(port=args.port or None)

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starting `cola broker &` without job control ignores SIGINT in the child, and Python then
    # installs no KeyboardInterrupt handler, so `kill -INT` would do nothing.
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with broker:
            print(f"embedded Kafka broker on {broker.bootstrap_servers} (pid {broker.pid}, memory storage); "
                  "Ctrl-C to stop", file=sys.stderr, flush=True)
            print(broker.bootstrap_servers, flush=True)
            code = broker.wait()
            print(f"broker exited with code {code}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
