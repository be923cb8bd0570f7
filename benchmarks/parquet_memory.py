"""Parquet batch path with bounded memory: ~1 GB of image bytes through ParquetSource -> magic-byte check ->
ParquetSink, peak RSS of that process printed next to the input size and next to a naive ``pq.read_table`` of the
same input.

    .venv/bin/python benchmarks/parquet_memory.py [--gb 1.0] [--row-kb 100] [--keep DIR] [--no-naive]

Each phase runs in its own child process so its peak RSS (VmHWM) is its own. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MiB = 1024 * 1024


def peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def generate(directory: Path, *, total_bytes: int, row_bytes: int, files: int) -> int:
    """Parquet files of ``id`` + ``image`` (PNG/JPEG signature + random bytes; 1% other -> dead letters) + a
    passthrough column, written one row group (256 rows) at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows_total = total_bytes // row_bytes
    per_file = rows_total // files
    row = 0
    for f in range(files):
        with pq.ParquetWriter(directory / f"input-{f:03d}.parquet",
                              pa.schema([("id", pa.string()), ("image", pa.binary()), ("user", pa.string())]),
                              compression="none") as writer:
            for start in range(0, per_file, 256):
                count = min(256, per_file - start)
                ids = [f"r{row + i}" for i in range(count)]
                images = [(b"\xff\xd8\xff" if (row + i) % 100 else b"GIF89a") + os.urandom(row_bytes - 6)
                          for i in range(count)]
                writer.write_table(pa.table({"id": ids, "image": images, "user": [f"u{(row + i) % 97}" for i in
                                                                                   range(count)]}))
                row += count
    return row


def run_pipeline(inputs: Path, output: Path) -> dict[str, float]:
    from cola_moderation.connectors.config import ParquetConfig
    from cola_moderation.connectors.parquet.sink import ParquetSink
    from cola_moderation.connectors.parquet.source import ParquetSource
    from tests.connectors.jobs import SERIALIZER, drain

    config = ParquetConfig()
    baseline = peak_rss_mib()
    started = time.perf_counter()
    sink = ParquetSink(output, SERIALIZER, config)
    with ParquetSource(inputs, config, skip=sink.is_complete) as source, sink:
        rows = drain(source, sink)
    return {"rows": rows, "seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib(),
            "rss_after_imports_mib": baseline, "max_batch_mib": config.max_batch_bytes / MiB}


def run_naive(inputs: Path) -> dict[str, float]:
    import pyarrow.parquet as pq

    started = time.perf_counter()
    table = pq.read_table(inputs)
    return {"rows": table.num_rows, "seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib()}


def child(phase: str, *args: str) -> dict[str, float]:
    result = subprocess.run([sys.executable, __file__, "--phase", phase, *args], check=True, capture_output=True,
                            text=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--row-kb", type=int, default=100)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: a temp dir, deleted)")
    parser.add_argument("--no-naive", action="store_true", help="skip the read_table comparison")
    parser.add_argument("--phase", choices=["pipeline", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "pipeline":
        print(json.dumps(run_pipeline(Path(args.paths[0]), Path(args.paths[1]))))
        return
    if args.phase == "naive":
        print(json.dumps(run_naive(Path(args.paths[0]))))
        return
    with tempfile.TemporaryDirectory(prefix="cola-parquet-bench-") as temp:
        work = args.keep or Path(temp)
        inputs, output = work / "input", work / "output"
        inputs.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        rows = generate(inputs, total_bytes=int(args.gb * 1024 * MiB), row_bytes=args.row_kb * 1024, files=args.files)
        size = sum(p.stat().st_size for p in inputs.glob("*.parquet")) / MiB
        print(f"input: {rows} rows, {size:.0f} MiB in {args.files} files (generated in "
              f"{time.perf_counter() - started:.0f} s)")
        result = child("pipeline", str(inputs), str(output))
        print(f"ParquetSource -> check -> ParquetSink: {result['rows']:.0f} rows in {result['seconds']:.1f} s "
              f"({result['rows'] / result['seconds']:.0f} rows/s, {size / result['seconds']:.0f} MiB/s)")
        print(f"  peak RSS {result['peak_rss_mib']:.0f} MiB (after imports {result['rss_after_imports_mib']:.0f} MiB; "
              f"batch bound {result['max_batch_mib']:.0f} MiB); peak RSS / input size = "
              f"{result['peak_rss_mib'] / size:.2f}")
        if not args.no_naive:
            naive = child("naive", str(inputs))
            print(f"naive pq.read_table of the same input: peak RSS {naive['peak_rss_mib']:.0f} MiB "
                  f"({naive['peak_rss_mib'] / result['peak_rss_mib']:.1f}x ours)")


if __name__ == "__main__":
    main()
