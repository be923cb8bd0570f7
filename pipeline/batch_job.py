"""``cola batch``: Parquet in -> Parquet out on Ray Data, resumable.

Stages (a streaming Ray Data pipeline)::

    input files --read (tasks)--> rows --decode (CPU tasks)--> pixels --model (actor pool)--> routed rows --> driver
                                                                                        ParquetSink (part files)

* read: each task streams one input file through :class:`~cola_moderation.connectors.parquet_source.ParquetSource`, so
  ids
  (``id`` column or ``file:row``), image paths and passthrough columns behave exactly as in the connector, and
  batches the output directory already holds are skipped (resume).
* decode: :class:`~cola_moderation.operators.decode.ImageDecoder` in CPU tasks (``ray.decode_num_cpus`` each); pixels
  travel as
  uint8, failures as messages.
* model: :class:`~cola_moderation.pipeline.worker.ModerationWorker` in an actor pool (``ray.actor_pool_min..max``
  actors, each
  reserving ``ray.worker_num_cpus`` / ``ray.worker_num_gpus`` / ``ray.worker_resources``).
* write: the driver gathers the rows of each source batch and hands them to :class:`ParquetSink`, which writes the
  batch's part files atomically. A batch is written only when all its rows arrived, so a killed job leaves whole
  batches or nothing, and a rerun redoes only the missing ones.

Ray Data's ``read_parquet`` is not used for the read stage because it exposes neither row positions (needed for the
``file:row`` ids and sources of the record schema) nor stable batch boundaries (needed for resume).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cola_moderation.connectors.config import ParquetConfig
from cola_moderation.connectors.parquet_sink import DIRECTORIES, ParquetSink
from cola_moderation.connectors.parquet_source import ParquetSource, expand_inputs
from cola_moderation.connectors.records import Batch, DeadLetter, FilePosition, InputRecord, Route
from cola_moderation.operators.backbone import load_geometry
from cola_moderation.operators.config import DecodeConfig
from cola_moderation.operators.decode import DecodedBatch, ImageDecoder
from cola_moderation.operators.errors import DecodeError
from cola_moderation.pipeline.config import PipelineConfig
from cola_moderation.pipeline.preflight import check_output_directory
from cola_moderation.pipeline.ray_runtime import check_worker_resources, init_ray, quiet_ray_console
from cola_moderation.pipeline.records import OutputRecord, OutputSerializer
from cola_moderation.pipeline.summary import RunSummary
from cola_moderation.pipeline.worker import ModerationWorker

log = logging.getLogger(__name__)

READ_NUM_CPUS = 0.25
BLOCK_BYTES = 1 << 20
ROW_SCHEMA = pa.schema([
    ("key", pa.string()), ("batch_total", pa.int64()), ("id", pa.string()), ("payload", pa.large_binary()),
    ("metadata", pa.string()), ("file", pa.string()), ("row", pa.int64()), ("error_class", pa.string()),
    ("error_message", pa.string()), ("error_stage", pa.string()),
])
"""Rows between stages. Error columns hold "" when there is no error (nulls turn into NaN in numpy batches)."""


def _json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def read_file(items: dict[str, np.ndarray], *, config: ParquetConfig, done: frozenset[str],
              max_image_bytes: int) -> Iterator[pa.Table]:
    """Read stage: stream every not-yet-written batch of each input file as one table of ``ROW_SCHEMA`` rows."""
    for file in items["file"]:
        with ParquetSource([str(file)], config, skip=done.__contains__, max_image_bytes=max_image_bytes) as source:
            while (batch := source.poll()) is not None:
                rows: list[dict[str, Any]] = []
                for record in batch.records:
                    rows.append(_row(batch, record))
                for dead in batch.dead_letters:
                    rows.append({**_row(batch, dead.record), "error_class": dead.error_class,
                                 "error_message": dead.error_message, "error_stage": dead.error_stage})
                yield pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def _row(batch: Batch, record: InputRecord) -> dict[str, Any]:
    position = record.source
    if not isinstance(position, FilePosition):
        raise TypeError(f"batch job rows come from files, got {position!r}")
    return {"key": batch.key, "batch_total": len(batch), "id": record.id, "payload": record.payload,
            "metadata": _json(dict(record.metadata)), "file": position.file, "row": position.row,
            "error_class": "", "error_message": "", "error_stage": ""}


def decode_rows(batch: dict[str, np.ndarray], *, size: int, config: DecodeConfig) -> dict[str, np.ndarray]:
    """Decode stage: adds ``pixels`` (uint8 ``[n, 3, size, size]``, zeros where decoding failed) and
    ``decode_error`` ("" when the row decoded)."""
    pending = [i for i, error in enumerate(batch["error_class"]) if not error]
    with ImageDecoder(size=size, config=config.model_copy(update={"workers": 1})) as decoder:
        decoded = decoder.decode([batch["payload"][i] for i in pending])
    pixels = np.zeros((len(batch["id"]), 3, size, size), dtype=np.uint8)
    errors = [""] * len(batch["id"])
    for row, tensor in zip((pending[i] for i in decoded.indices), decoded.pixels, strict=True):
        pixels[row] = tensor.mul(255).round_().to(torch.uint8).numpy()
    for index, error in decoded.errors.items():
        errors[pending[index]] = str(error)
    return {**batch, "pixels": pixels, "decode_error": np.array(errors, dtype=object)}


class ModelStage:
    """Model stage (one per pool actor): routes every row to output, quarantine or dead-letter."""

    def __init__(self, config: PipelineConfig) -> None:
        self.worker = ModerationWorker(config, job="batch")
        self.worker.start()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        received_at = time.time()
        out: dict[str, list[Any]] = defaultdict(list)

        def emit(index: int, route: Route, record: str, payload: bytes = b"") -> None:
            out["key"].append(batch["key"][index])
            out["batch_total"].append(batch["batch_total"][index])
            out["route"].append(route.value)
            out["record"].append(record)
            out["payload"].append(payload)

        live = [i for i, error in enumerate(batch["error_class"]) if not error]
        records = [InputRecord(str(batch["id"][i]), b"", json.loads(batch["metadata"][i]),
                               FilePosition(str(batch["file"][i]), int(batch["row"][i]))) for i in live]
        decoded_rows = [n for n, i in enumerate(live) if not batch["decode_error"][i]]
        decoded = DecodedBatch(
            pixels=torch.from_numpy(np.stack([batch["pixels"][live[n]] for n in decoded_rows])
                                    if decoded_rows else np.zeros((0, *batch["pixels"].shape[1:]), np.uint8)
                                    ).float().div_(255.0),
            indices=tuple(decoded_rows),
            errors={n: DecodeError(str(batch["decode_error"][i])) for n, i in enumerate(live)
                    if batch["decode_error"][i]},
        )
        outcomes = iter(self.worker.process_decoded(records, decoded, received_at=received_at).outcomes)
        for index, error in enumerate(batch["error_class"]):
            if error:  # a source-stage dead letter
                dead = DeadLetter(InputRecord(str(batch["id"][index]), b"", {}, FilePosition("", 0)), str(error),
                                  str(batch["error_message"][index]), str(batch["error_stage"][index]))
                emit(index, Route.DEAD_LETTER, _dead_json(dead, index, batch), bytes(batch["payload"][index]))
                continue
            outcome = next(outcomes)  # one per live row, in order
            if isinstance(outcome, DeadLetter):
                emit(index, Route.DEAD_LETTER, _dead_json(outcome, index, batch), bytes(batch["payload"][index]))
            else:
                emit(index, outcome.route, _json(outcome.record.to_json()))
        return {name: np.array(values, dtype=object) for name, values in out.items()}


def _dead_json(dead: DeadLetter, index: int, batch: dict[str, np.ndarray]) -> str:
    return _json({"id": str(batch["id"][index]), "metadata": json.loads(batch["metadata"][index]),
                  "file": str(batch["file"][index]), "row": int(batch["row"][index]),
                  "error_class": dead.error_class, "error_message": dead.error_message,
                  "error_stage": dead.error_stage})


class BatchWriter:
    """Driver side: collects the model stage's rows per source batch and writes complete batches."""

    def __init__(self, sink: ParquetSink, summary: RunSummary, *, started: float | None = None) -> None:
        """``started``: the job's ``time.perf_counter()`` start, for the summary's start-up time."""
        self.sink = sink
        self.summary = summary
        self.started = time.perf_counter() if started is None else started
        self.pending: dict[str, list[tuple[str, str, bytes]]] = defaultdict(list)

    def add(self, key: str, total: int, route: str, record: str, payload: bytes) -> int:
        """Buffer one row; returns how many rows were written (the whole batch when this row completes it)."""
        rows = self.pending[key]
        rows.append((route, record, payload))
        if len(rows) < total:
            return 0
        del self.pending[key]
        parsed = [(route_name, json.loads(text), original) for route_name, text, original in rows]
        for route_name, data, original in parsed:
            if route_name == Route.DEAD_LETTER.value:
                record_in = InputRecord(data["id"], original, data["metadata"], FilePosition(data["file"], data["row"]))
                self.sink.add_dead_letter(DeadLetter(record_in, data["error_class"], data["error_message"],
                                                     data["error_stage"]))
            else:
                self.sink.add(Route(route_name), OutputRecord.from_json(data))
        self.sink.flush(Batch(key, ()))
        for route_name, data, _ in parsed:  # counted once written
            if route_name == Route.DEAD_LETTER.value:
                self.summary.add_dead_letter(data["error_stage"], data["error_class"])
            else:
                self.summary.add_output(route_name, OutputRecord.from_json(data))
        self.summary.mark_first_output(time.perf_counter() - self.started)
        return len(rows)


def completed_keys(output: Path) -> frozenset[str]:
    """Batch keys whose output part exists (the sink writes it last, so it marks a complete batch)."""
    directory = output / DIRECTORIES[Route.OUTPUT]
    if not directory.is_dir():
        return frozenset()
    return frozenset(p.name[len("part-") : -len(".parquet")] for p in directory.glob("part-*.parquet"))


def pool_restart_args(max_restarts: int) -> dict[str, Any]:
    """``max_restarts`` for the pool's actors; Ray Data takes it only as a (deprecated) extra remote argument, so
    Ray's default (restart forever) is left alone when that is what the config asks for."""
    return {} if max_restarts == -1 else {"max_restarts": max_restarts}


def run_batch_job(config: PipelineConfig, *, inputs: str | list[str], output: str | Path,
                  address: str | None = None, progress: bool = True) -> RunSummary:
    """Moderate every row of ``inputs`` into ``output`` (``output/``, ``quarantine/``, ``dead_letter/`` datasets)."""
    from tqdm import tqdm

    files = expand_inputs(inputs)
    output = check_output_directory(output)  # one-line error before Ray starts
    sink = ParquetSink(output, OutputSerializer(), config.parquet)
    done = completed_keys(output)
    geometry = load_geometry(config.model)
    init_ray(config.ray, address=address)  # before importing ray: it reads its environment at import
    import ray.data
    from ray.util.debug import log_once

    check_worker_resources(config.ray, workers=config.ray.actor_pool_min, max_workers=config.ray.actor_pool_max,
                           reserve_cpus=READ_NUM_CPUS + config.ray.decode_num_cpus)
    quiet_ray_console()  # ray.data installs its console handler at import
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours (rows written) is the one that means something to the user
    log_once("ray_data_progress_manager_disabled")  # deliberate: no "Progress bars disabled" warning
    # Small blocks let the stages overlap: with Ray Data's default (128 MiB) a whole file of small images becomes one
    # block, so decoding waits for the whole read and the model for the whole decode.
    context.target_max_block_size = BLOCK_BYTES

    total_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    summary = RunSummary(skipped_batches=len(done))
    started = time.perf_counter()
    dataset = (
        ray.data.from_items([{"file": str(f)} for f in files], override_num_blocks=len(files))
        .map_batches(partial(read_file, config=config.parquet, done=done,
                                     max_image_bytes=config.decode.max_bytes), batch_size=1, num_cpus=READ_NUM_CPUS,
                     batch_format="numpy")
        .map_batches(partial(decode_rows, size=geometry.size, config=config.decode),
                     batch_size=config.model.batch_size, num_cpus=config.ray.decode_num_cpus, batch_format="numpy")
    )
    with warnings.catch_warnings():  # max_restarts is accepted only as a deprecated extra remote argument
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        dataset = dataset.map_batches(
            ModelStage, batch_size=config.model.batch_size, batch_format="numpy",
            fn_constructor_kwargs={"config": config},
            compute=ray.data.ActorPoolStrategy(min_size=config.ray.actor_pool_min, max_size=config.ray.actor_pool_max),
            num_cpus=config.ray.worker_num_cpus, num_gpus=config.ray.worker_num_gpus,
            resources=dict(config.ray.worker_resources) or None, **pool_restart_args(config.ray.actor_max_restarts))
    writer = BatchWriter(sink, summary, started=started)
    # Counts images as they come back from the model (a batch is written once all its rows are back); on a terminal
    # only (disable=None), so logs and pipes get no carriage-return noise.
    with tqdm(total=total_rows, unit="img", desc="cola batch", disable=None if progress else True) as bar:
        for rows in dataset.iter_batches(batch_format="numpy", batch_size=None):
            for key, total, route, record, payload in zip(rows["key"], rows["batch_total"], rows["route"],
                                                          rows["record"], rows["payload"], strict=True):
                writer.add(str(key), int(total), str(route), str(record), bytes(payload))
            bar.update(len(rows["key"]))
    if log.isEnabledFor(logging.DEBUG):
        log.debug("Ray Data execution stats:\n%s", dataset.stats())
    if writer.pending:
        raise RuntimeError(f"batches not fully returned by the pipeline: {sorted(writer.pending)}")
    summary.seconds = time.perf_counter() - started
    sink.close()
    return summary
