"""``cola batch``: Parquet in -> Parquet out on Ray Data, resumable. Input and output may be local paths or
``pyarrow.fs`` URIs (``s3://...``, ``gs://...``).

Stages (a streaming Ray Data pipeline; every batch between stages is an Arrow table)::

    input files --read (tasks)--> rows --decode (CPU tasks)--> uint8 pixels --model (actor pool)--> routed rows
                                                                                --> driver --> ParquetSink (dataset)

* read: each task streams one input file through
  :meth:`~cola_moderation.connectors.parquet.source.ParquetSource.tables`, so ids (``id`` column or ``file:row``),
  image paths and source-stage dead letters behave exactly as in the connector, and batches the output already holds
  are skipped (resume). Columns: :data:`~cola_moderation.connectors.parquet.source.ROW_FIELDS`, ``key``,
  ``batch_total``, and the passthrough columns (prefix :data:`PASSTHROUGH`) with their input Arrow types, cast to one
  schema across the input files.
* decode: :class:`~cola_moderation.operators.decode.ImageDecoder` in CPU tasks (``ray.decode_num_cpus`` each) adds
  ``pixels`` (uint8 ``[3, size, size]`` tensors), ``decode_error``, and for animated inputs the sampled ``frames``,
  ``frame_count`` and ``extra_frames`` (the frames after the first, as bytes); the image bytes of a row that decoded are
  dropped here (kept only for dead letters). With ``matching.banks`` it also adds each row's ``md5`` / ``pdq`` /
  ``pdq_quality`` (the matching stage's signals, computed on the image this task decoded).
* model: :class:`~cola_moderation.pipeline.runtime.worker.ModerationWorker` in an actor pool
  (``ray.actor_pool_min..max`` actors, each reserving ``ray.worker_num_cpus`` / ``ray.worker_num_gpus`` /
  ``ray.worker_resources``) turns the pixels into the output record's Arrow columns (one outcome per row, in order);
  pixels become floats only there.
* write: the driver gathers the rows of each source batch and hands the complete batch to :class:`ParquetSink`
  (one hive-partitioned dataset, files sized by ``parquet.file_rows`` / ``parquet.file_bytes``). A killed job leaves
  whole rolls of batches or nothing, and a rerun redoes only the missing batches.

The read and decode stages live in :mod:`~cola_moderation.pipeline.jobs.batch_stages`, which imports no ``torch``:
the worker processes running them start in ~0.1 s of imports instead of ~1 s, CPU that the model actor, importing
``torch`` and the backbone while they start, does not have to share (2-core machines, fresh clusters).

Ray Data's ``read_parquet`` is not used for the read stage because it exposes neither row positions (needed for the
``file:row`` ids and sources of the record schema) nor stable batch boundaries (needed for resume).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import defaultdict
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cola_moderation.connectors.filesystem import is_uri
from cola_moderation.connectors.parquet.sink import ParquetSink
from cola_moderation.connectors.parquet.source import (
    expand_inputs,
    open_parquet,
    resolve_passthrough,
    screen_input_files,
)
from cola_moderation.connectors.records import Route, file_source_array
from cola_moderation.operators.backbones.registry import load_geometry
from cola_moderation.operators.decode import DecodedBatch
from cola_moderation.operators.errors import DecodeError, error_fields
from cola_moderation.operators.matching.signals import ImageHashes
from cola_moderation.pipeline.jobs.batch_stages import PASSTHROUGH, decode_rows, read_and_decode, read_file
from cola_moderation.pipeline.jobs.preflight import check_output_directory
from cola_moderation.pipeline.jobs.ray_errors import raise_ours
from cola_moderation.pipeline.jobs.ray_runtime import (
    check_worker_resources,
    init_ray,
    is_private_cluster,
    node_resources,
    quiet_ray_console,
)
from cola_moderation.pipeline.runtime.config import PipelineConfig
from cola_moderation.pipeline.runtime.records import OutputSerializer
from cola_moderation.pipeline.runtime.summary import RunSummary
from cola_moderation.pipeline.runtime.worker import ModerationWorker

log = logging.getLogger(__name__)

READ_NUM_CPUS = 0.25
BLOCK_BYTES = 1 << 20


def model_inputs(rows: int, *, batch_size: int, size: int, files: int) -> int:
    """About how many blocks reach the model stage: the decode tasks' batches of ``batch_size`` rows (uint8 pixels,
    ``3 x size x size`` bytes a row) are merged into blocks of up to :data:`BLOCK_BYTES`, and no block spans two
    input files. A pool actor takes a block at a time, so actors beyond this number would only start and idle."""
    batches_per_block = max(1, BLOCK_BYTES // (batch_size * 3 * size * size))
    return max(1, files, -(-rows // (batches_per_block * batch_size)))


def pool_size(config: PipelineConfig, *, rows: int, size: int, files: int) -> tuple[int, int]:
    """(min, max) model actors for a job of ``rows`` rows: ``ray.actor_pool_min`` / ``max``, but no more than the
    blocks the job gives the model stage (a small job does not start actors it cannot use; logged)."""
    inputs = model_inputs(rows, batch_size=config.model.batch_size, size=size, files=files)
    pool_min = min(config.ray.actor_pool_min, inputs)
    pool_max = max(pool_min, min(config.ray.actor_pool_max, inputs))
    if pool_min < config.ray.actor_pool_min:
        log.info("%d model actor(s) instead of ray.actor_pool_min=%d: %d rows reach the model stage as ~%d block(s)",
                 pool_min, config.ray.actor_pool_min, rows, inputs)
    return pool_min, pool_max


def fuse_read_decode(config: PipelineConfig, *, workers: int, private: bool, cluster_cpus: float) -> bool:
    """Whether to read and decode in one task (``ray.read_decode``; see :class:`RayConfig`). ``auto``: on a private
    cluster whose CPUs, less the ``workers`` model actors' and a read task's, leave room for fewer than two decode
    tasks (2 cores, two half-CPU actors: room for one), where a separate decode stage would run one task at a time
    anyway and only cost a worker process (measured: ~1.5 s of a 12-15 s job at 8,000 images)."""
    mode = config.ray.read_decode
    if mode != "auto":
        return mode == "fused"
    spare = cluster_cpus - workers * config.ray.worker_num_cpus - READ_NUM_CPUS
    return private and spare < 2 * config.ray.decode_num_cpus - 1e-9


def decoded_batch(batch: pa.Table, live: list[int], decoded_rows: list[int], errors: dict[int, DecodeError]
                  ) -> DecodedBatch:
    """The :class:`DecodedBatch` of the decode stage's columns: rows ``live[k]`` for ``k`` in ``decoded_rows``
    (animated rows give one pixel row per sampled frame)."""
    pixels = batch.column("pixels").combine_chunks().to_numpy()  # uint8 [n, 3, size, size]
    frames = batch.column("frames").to_pylist()
    if not any(frames[live[k]] for k in decoded_rows):  # still images only: one row each
        return DecodedBatch(pixels=torch.from_numpy(np.ascontiguousarray(pixels[[live[k] for k in decoded_rows]])),
                            indices=tuple(decoded_rows), errors=errors)
    counts, extra = batch.column("frame_count").to_pylist(), batch.column("extra_frames").to_pylist()
    arrays: list[np.ndarray] = []
    indices: list[int] = []
    frame_of: list[int] = []
    frame_counts: dict[int, int] = {}
    for k in decoded_rows:
        row = live[k]
        sampled = frames[row] or [0]
        arrays.append(pixels[row][None])
        if len(sampled) > 1:
            arrays.append(np.frombuffer(extra[row], np.uint8).reshape(len(sampled) - 1, *pixels.shape[1:]))
        if frames[row]:
            frame_counts[k] = counts[row]
        indices.extend([k] * len(sampled))
        frame_of.extend(sampled)
    return DecodedBatch(pixels=torch.from_numpy(np.concatenate(arrays)), indices=tuple(indices), errors=errors,
                        frames=tuple(frame_of), frame_counts=frame_counts)


class ModelStage:
    """Model stage (one per pool actor): routes every row to output, quarantine or dead-letter, table in, table
    out. The record's own columns come from :meth:`ModerationWorker.process_columns`; ``id``, ``source`` and the
    passthrough columns come from the input table as they are."""

    def __init__(self, config: PipelineConfig) -> None:
        self.worker = ModerationWorker(config, job="batch")
        self.worker.start()

    def __call__(self, batch: pa.Table) -> pa.Table:
        received_at = time.time()
        n = batch.num_rows
        cols = batch.select(["id", "error_class", "error_message", "error_stage", "decode_error"]).to_pydict()
        live = [i for i in range(n) if cols["error_class"][i] is None]
        decoded_rows = [k for k, i in enumerate(live) if cols["decode_error"][i] is None]
        decoded = decoded_batch(batch, live, decoded_rows, {k: DecodeError(cols["decode_error"][i])
                                                            for k, i in enumerate(live)
                                                            if cols["decode_error"][i] is not None})
        if "md5" in batch.column_names:  # the matching stage's signals from the decode tasks
            signals = batch.select(["md5", "pdq", "pdq_quality"]).to_pydict()
            decoded = replace(decoded, hashes={
                k: ImageHashes(md5=signals["md5"][live[k]], pdq=signals["pdq"][live[k]],
                               pdq_quality=signals["pdq_quality"][live[k]]) for k in decoded_rows})
        result = self.worker.process_columns([cols["id"][i] for i in live], decoded, received_at=received_at)
        routes = [Route.DEAD_LETTER.value] * n
        error_class, error_message, error_stage = cols["error_class"], cols["error_message"], cols["error_stage"]
        at: list[int | None] = [None] * n  # row -> its row in the worker's columns (None: no record)
        for k, (i, route) in enumerate(zip(live, result.routes, strict=True)):  # one answer per live row, in order
            if route is None:
                fields = error_fields(result.errors[k])
                error_class[i], error_message[i] = fields["error.class"], fields["error.message"]
                error_stage[i] = fields["error.stage"]
            else:
                routes[i] = route.value
                at[i] = k
        take = pa.array(at, pa.int64())
        dead = pa.array([route == Route.DEAD_LETTER.value for route in routes], pa.bool_())
        out = {"key": batch.column("key"), "batch_total": batch.column("batch_total"),
               "route": pa.array(routes, pa.string()), "id": batch.column("id"),
               "source": file_source_array(batch.column("file"), batch.column("row")),
               **{name: array.take(take) for name, array in result.columns.items()},
               "payload": pc.if_else(dead, batch.column("payload"), pa.scalar(None, pa.large_binary())),
               "error_class": pa.array(error_class, pa.string()), "error_message": pa.array(error_message, pa.string()),
               "error_stage": pa.array(error_stage, pa.string())}
        out.update({name: batch.column(name) for name in batch.column_names if name.startswith(PASSTHROUGH)})
        return pa.table(out)


class BatchWriter:
    """Driver side: collects the model stage's rows per source batch and hands complete batches to the sink."""

    def __init__(self, sink: ParquetSink, summary: RunSummary, *, started: float | None = None) -> None:
        """``started``: the job's ``time.perf_counter()`` start, for the summary's start-up time."""
        self.sink = sink
        self.summary = summary
        self.started = time.perf_counter() if started is None else started
        self.pending: dict[str, list[pa.Table]] = defaultdict(list)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, rows: pa.Table) -> int:
        """Buffer the model stage's ``rows``; returns how many rows were accepted by the sink (the batches they
        complete)."""
        written = 0
        keys = rows.column("key")
        for key in pc.unique(keys).to_pylist():
            part = rows.filter(pc.equal(keys, key))
            self.pending[key].append(part)
            self.counts[key] += part.num_rows
            if self.counts[key] == part.column("batch_total")[0].as_py():
                written += self._write(key)
        return written

    def _write(self, key: str) -> int:
        table = pa.concat_tables(self.pending.pop(key))
        del self.counts[key]
        passthrough = table.select([c for c in table.column_names if c.startswith(PASSTHROUGH)])
        passthrough = passthrough.rename_columns([c[len(PASSTHROUGH):] for c in passthrough.column_names])
        routes = table.column("route").combine_chunks()
        self.sink.add_columns(key, routes, {name: table.column(name).combine_chunks() for name in table.column_names},
                              passthrough)
        counted = table.select(["route", "label", "action", "suspected_adversarial", "error_stage", "error_class"])
        for row in counted.to_pylist():  # counted once accepted
            if row["route"] == Route.DEAD_LETTER.value:
                self.summary.add_dead_letter(row["error_stage"], row["error_class"])
            else:
                self.summary.add_counts(row["route"], row["label"], row["action"], row["suspected_adversarial"])
        self.summary.mark_first_output(time.perf_counter() - self.started)
        return table.num_rows


def pool_restart_args(max_restarts: int) -> dict[str, Any]:
    """``max_restarts`` for the pool's actors; Ray Data takes it only as a (deprecated) extra remote argument, so
    Ray's default (restart forever) is left alone when that is what the config asks for."""
    return {} if max_restarts == -1 else {"max_restarts": max_restarts}


def run_batch_job(config: PipelineConfig, *, inputs: str | list[str], output: str | Path,
                  address: str | None = None, progress: bool = True) -> RunSummary:
    """Moderate every row of ``inputs`` into the dataset ``output`` (``route=output|quarantine|dead_letter``)."""
    from tqdm import tqdm

    files, bad_files = screen_input_files(expand_inputs(inputs), config.parquet)  # parquet.on_bad_file
    skipped_files = [(file.uri, reason) for file, reason in bad_files]
    if not is_uri(output):
        output = check_output_directory(output)  # one-line error before Ray starts
    if not files:  # every input was skipped: nothing to start Ray for
        return RunSummary(skipped_files=skipped_files)
    passthrough, conflicts = resolve_passthrough(files, config.parquet)  # parquet.on_schema_conflict
    skipped_files += [(uri, reason) for uri, reason in conflicts.items()]
    sink = ParquetSink(output, OutputSerializer(), config.parquet, passthrough=passthrough)
    done = sink.completed
    geometry = load_geometry(config.model)
    cluster_started = time.perf_counter()
    init_ray(config.ray, address=address)  # before importing ray: it reads its environment at import
    cluster_s = time.perf_counter() - cluster_started
    import ray.data
    from ray.util.debug import log_once

    total_rows = 0
    for file in files:
        parquet = open_parquet(file)
        total_rows += parquet.metadata.num_rows
        parquet.close()
    pool_min, pool_max = pool_size(config, rows=total_rows, size=geometry.size, files=len(files))
    cluster_cpus = sum(node.get("CPU", 0.0) for node in node_resources())
    fused = fuse_read_decode(config, workers=pool_min, private=is_private_cluster(), cluster_cpus=cluster_cpus)
    log.info("read and decode: %s (ray.read_decode=%s, %g CPUs)", "one task per file" if fused else "separate tasks",
             config.ray.read_decode, cluster_cpus)
    check_worker_resources(config.ray, workers=pool_min, max_workers=pool_max,
                           reserve_cpus=config.ray.decode_num_cpus + (0.0 if fused else READ_NUM_CPUS))
    quiet_ray_console()  # ray.data installs its console handler at import
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours (rows written) is the one that means something to the user
    log_once("ray_data_progress_manager_disabled")  # deliberate: no "Progress bars disabled" warning
    # Small blocks let the stages overlap: with Ray Data's default (128 MiB) a whole file of small images becomes one
    # block, so decoding waits for the whole read and the model for the whole decode.
    context.target_max_block_size = BLOCK_BYTES

    summary = RunSummary(skipped_batches=len(done), skipped_files=skipped_files, cluster_s=cluster_s)
    started = time.perf_counter()
    read = partial(read_file, files=files, passthrough=passthrough, config=config.parquet, done=done,
                   max_image_bytes=config.decode.max_bytes, conflicts=conflicts)
    decode = partial(decode_rows, size=geometry.size, config=config.decode, hashing=config.matching.enabled)
    items = ray.data.from_items([{"index": i} for i in range(len(files))], override_num_blocks=len(files))
    if fused:
        dataset = items.map_batches(partial(read_and_decode, read=read, decode=decode,
                                            batch_rows=config.model.batch_size),
                                    batch_size=1, num_cpus=config.ray.decode_num_cpus, batch_format="pyarrow")
    else:
        dataset = (items.map_batches(read, batch_size=1, num_cpus=READ_NUM_CPUS, batch_format="pyarrow")
                   .map_batches(decode, batch_size=config.model.batch_size, num_cpus=config.ray.decode_num_cpus,
                                batch_format="pyarrow"))
    with warnings.catch_warnings():  # max_restarts is accepted only as a deprecated extra remote argument
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        dataset = dataset.map_batches(
            ModelStage, batch_size=config.model.batch_size, batch_format="pyarrow",
            fn_constructor_kwargs={"config": config},
            compute=ray.data.ActorPoolStrategy(min_size=pool_min, max_size=pool_max),
            num_cpus=config.ray.worker_num_cpus, num_gpus=config.ray.worker_num_gpus,
            resources=dict(config.ray.worker_resources) or None, **pool_restart_args(config.ray.actor_max_restarts))
    writer = BatchWriter(sink, summary, started=started)
    # Counts images as they come back from the model (a batch is written once all its rows are back); on a terminal
    # only (disable=None), so logs and pipes get no carriage-return noise.
    with tqdm(total=total_rows, unit="img", desc="cola batch", disable=None if progress else True) as bar:
        try:
            for rows in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                summary.mark_first_rows(time.perf_counter() - started)  # the start-up split `cola batch` prints
                table: pa.Table = rows  # batch_format="pyarrow"
                writer.add(table)
                bar.update(table.num_rows)
        except Exception as exc:
            raise_ours(exc)  # e.g. BadInputFileError from a read task: its one line, not Ray's wrapper
            raise
    if log.isEnabledFor(logging.DEBUG):
        log.debug("Ray Data execution stats:\n%s", dataset.stats())
    if writer.pending:
        raise RuntimeError(f"batches not fully returned by the pipeline: {sorted(writer.pending)}")
    sink.close()  # writes the last roll
    summary.seconds = time.perf_counter() - started
    return summary
