"""``cola batch --config C --input PATH_OR_GLOB --output DIR``: Parquet in -> Parquet out on Ray, resumable."""

from __future__ import annotations

import argparse
import json

from cola_moderation.pipeline.runtime.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML config")
    parser.add_argument("--input", required=True, nargs="+",
                        help="Parquet files, directories or globs (local, or s3:// gs:// URIs)")
    parser.add_argument("--output", required=True,
                        help="output dataset: a directory or URI (s3://..., gs://...) holding route=output/, "
                             "route=quarantine/, route=dead_letter/")
    parser.add_argument("--address", help="Ray cluster address (default: ray.address, RAY_ADDRESS, or a private one)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from cola_moderation.connectors.filesystem import is_uri
    from cola_moderation.pipeline.jobs.preflight import check_output_directory

    config = load_config(args.config)  # config and output mistakes: one line, before the heavy imports
    if not is_uri(args.output):  # a URI's bucket is checked by its filesystem, not created as a local folder
        check_output_directory(args.output)
    from cola_moderation.pipeline.jobs.batch import run_batch_job

    summary = run_batch_job(config, inputs=args.input, output=args.output, address=args.address)
    print(json.dumps(summary.as_dict()) if args.json else summary.table(f"cola batch -> {args.output}"))
    return 0
