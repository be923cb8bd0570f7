"""``cola review``: the reviewer console over a quarantine route, and the decisions route it writes.

    cola review --config C OUTPUT_DIR [--decisions DIR] [--port 8765] [--token-file F]   # a cola batch output
    cola review --config C kafka: [--bootstrap HOST:PORT]                                # the quarantine topic
    cola review --config C OUTPUT_DIR --export dsa --output statements.jsonl             # DSA statements, then exit

Bound to 127.0.0.1 unless ``--host`` says otherwise. Decisions go to ``DIR/route=decisions/`` (default
``OUTPUT_DIR-decisions``) for a dataset, to ``kafka.decisions_topic`` for a topic; ``--decisions`` /
``--decisions-kafka`` add the other. Without ``--token-file`` a token is generated and the sign-in link printed once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cola_moderation.connectors.filesystem import location
from cola_moderation.operators.errors import ConfigError
from cola_moderation.pipeline.jobs.review.decision_log import DecisionLog, KafkaDecisions, ParquetDecisions
from cola_moderation.pipeline.runtime.config import PipelineConfig, load_config

KAFKA_PREFIX = "kafka:"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML (taxonomy, policy, kafka, parquet, decode)")
    parser.add_argument("source", help="a cola batch --output dataset (local path or URI), or kafka:[TOPIC] for the "
                                       "quarantine topic (default kafka.quarantine_topic)")
    parser.add_argument("--decisions", default=None,
                        help="Parquet decisions dataset (DIR/route=decisions/; default for a dataset source: "
                             "SOURCE-decisions)")
    parser.add_argument("--decisions-kafka", action="store_true",
                        help="also write decisions to kafka.decisions_topic (the default for a kafka: source)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default kafka.bootstrap_servers)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port (default %(default)s)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="reviewer tokens, one 'reviewer:token' (or bare token) per line")
    parser.add_argument("--reviewer", default="reviewer", help="reviewer name of bare tokens (default %(default)s)")
    parser.add_argument("--export", choices=("dsa",), default=None,
                        help="write statements of reasons (reviewed restrictions, and a dataset's automated "
                             "blocks) to --output and exit")
    parser.add_argument("--output", type=Path, default=None, help="--export: JSON-lines file to write")
    parser.add_argument("--platform", default="cola-moderation", help="--export dsa: platform_name")


def decision_routes(args: argparse.Namespace, config: PipelineConfig) -> list[ParquetDecisions | KafkaDecisions]:
    """The decisions routes, the one decisions are loaded from at start first (the source's kind)."""
    kafka_source = args.source.startswith(KAFKA_PREFIX)
    parquet_dir = args.decisions or (None if kafka_source else args.source.rstrip("/") + "-decisions")
    parquet = ParquetDecisions(parquet_dir) if parquet_dir is not None else None
    kafka = KafkaDecisions(config.kafka, bootstrap_servers=args.bootstrap) \
        if kafka_source or args.decisions_kafka else None
    ordered = [kafka, parquet] if kafka_source else [parquet, kafka]
    return [route for route in ordered if route is not None]


def run(args: argparse.Namespace) -> int:
    from cola_moderation.pipeline.jobs.review.app import ReviewConsole, build_app
    from cola_moderation.pipeline.jobs.review.auth import Authenticator, generate_token, read_token_file
    from cola_moderation.pipeline.jobs.review.items import ItemStore, KafkaItems, ParquetItems

    config = load_config(args.config, calibrate=False)
    if args.export and args.output is None:
        raise ConfigError("--export needs --output FILE")
    if not args.source.startswith(KAFKA_PREFIX) and not location(args.source).is_dir():
        raise ConfigError(f"{args.source}: not a directory (cola review reads a cola batch --output dataset, or "
                          "kafka:[TOPIC])")
    log = DecisionLog(decision_routes(args, config))
    loaded = log.load()
    if args.export == "dsa":
        from cola_moderation.pipeline.jobs.review.dsa import statements

        written = statements(log.latest(), config.policy, platform=args.platform)
        if not args.source.startswith(KAFKA_PREFIX):  # the uploads the policy blocked with no human involved
            from cola_moderation.connectors.records import Route
            from cola_moderation.pipeline.jobs.review.dsa import automated_statements
            from cola_moderation.pipeline.jobs.review.items import read_route

            written += automated_statements(read_route(args.source, Route.OUTPUT), log.decided_ids(),
                                            platform=args.platform)
        with open(args.output, "w", encoding="utf-8") as handle:
            for document in written:
                handle.write(json.dumps(document, ensure_ascii=False) + "\n")
        print(f"cola review: {len(written)} statements of reasons from {loaded} decisions -> {args.output}",
              file=sys.stderr)
        log.close()
        return 0

    items: ItemStore
    if args.source.startswith(KAFKA_PREFIX):
        items = KafkaItems(config.kafka, decode=config.decode, bootstrap_servers=args.bootstrap,
                           topic=args.source[len(KAFKA_PREFIX):] or None)
    else:
        items = ParquetItems(args.source, parquet=config.parquet, decode=config.decode)
    if args.token_file is not None:
        tokens = read_token_file(args.token_file, reviewer=args.reviewer)
        link = f"http://{args.host}:{args.port}/login?token=<your token>"
    else:
        token = generate_token()
        tokens = {token: args.reviewer}
        link = f"http://{args.host}:{args.port}/login?token={token}"
    console = ReviewConsole(items=items, decisions=log, labels=config.taxonomy.label_names, auth=Authenticator(tokens))
    import uvicorn

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"cola review: listening on {args.host}, beyond this machine: tokens and cookies travel in clear "
              "text unless a TLS proxy sits in front", file=sys.stderr)

    print(f"cola review: {len(items)} quarantined records, {loaded} decisions so far; open {link} "
          "(Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        uvicorn.run(build_app(console), host=args.host, port=args.port, log_level="warning", access_log=False,
                    lifespan="off")
    finally:
        items.close()
        log.close()
    return 0
