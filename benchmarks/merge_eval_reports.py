"""Merge ``cola eval`` suite reports (schema ``cola-eval/2``) of consecutive slices of one dataset, run in parallel
as shards (``--offset``/``--limit``), into one report with pooled counts and recomputed 95% intervals.

    python benchmarks/merge_eval_reports.py --output merged.json shard-0.json shard-1.json ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cola_moderation.pipeline.research.evaluation.report import merge_suite_reports, suite_markdown, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args()
    merged = merge_suite_reports([json.loads(path.read_text()) for path in args.reports])
    write_report(merged, args.output)
    print(suite_markdown(merged))


if __name__ == "__main__":
    main()
