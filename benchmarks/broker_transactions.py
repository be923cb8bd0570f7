"""Which parts of Kafka transactions a broker implements, as the exactly-once stream path uses them: transactional
offset commits, read_committed filtering of aborted and open transactions, producer fencing, fencing of offsets
from members no longer in the group. A minimal reproduction
(kafka-python 3 transactional producer; kafka-python and confluent-kafka read_committed consumers) on fresh topics.

    .venv/bin/python benchmarks/broker_transactions.py                   # the embedded broker (Tansu)
    .venv/bin/python benchmarks/broker_transactions.py --bootstrap H:P   # any other Kafka

Prints one line per check and exits 1 when any check fails. See docs/delivery.md for the results.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cola_moderation.connectors.local.broker import EmbeddedBroker, tansu_binary
from cola_moderation.connectors.local.kafka_tools import probe_transactions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="an external broker (default: start the embedded Tansu broker)")
    parser.add_argument("--abandoned-wait", type=float, default=15.0,
                        help="seconds to wait for the broker to abort an abandoned transaction (timeout 2 s)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.bootstrap:
            bootstrap, broker = args.bootstrap, args.bootstrap
        else:
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap_servers
            broker = f"embedded {tansu_binary()} on {bootstrap}"
        print(f"broker: {broker}")
        checks = probe_transactions(bootstrap, abandoned_wait_s=args.abandoned_wait)
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name:26s} {check.detail}")
    return 0 if all(check.ok for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
