"""``ray:``, ``serve:`` and ``stream:`` config sections: where workers run and how Serve scales them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from cola_moderation.connectors.registry import STREAM_CONNECTORS
from cola_moderation.operators.config import Section, registered

MiB = 1024 * 1024


class RayConfig(Section):
    """Cluster connection and the resources each model worker reserves."""

    address: str | None = None
    """None: start a private cluster on 127.0.0.1 (or join ``RAY_ADDRESS`` if set); ``auto`` or ``host:port``: connect
    to an existing cluster. ``cola batch|stream|serve --address`` overrides it."""
    namespace: str = "cola-moderation"
    include_dashboard: bool = False
    num_cpus: Annotated[int, Field(ge=1)] | None = None
    """CPUs of a private local cluster (default: all cores)."""
    worker_num_cpus: Annotated[float, Field(gt=0)] = 1.0
    """CPUs reserved by each model worker (actor or replica). Keep it below the node's CPUs so decode and read tasks
    can still run: on a 2-core machine a pool reserving both CPUs starves them."""
    worker_num_gpus: Annotated[float, Field(ge=0)] = 0.0
    """GPUs per model worker; fractions share a GPU between replicas. Checked against the cluster before
    scheduling (asking for a GPU a cluster lacks would otherwise wait forever)."""
    worker_resources: dict[str, float] = Field(default_factory=dict)
    """Custom resources each worker requires (e.g. ``{model_node: 1}`` to place workers on labelled nodes)."""
    decode_num_cpus: Annotated[float, Field(gt=0)] = 0.5
    """CPUs per decode task of the batch job."""
    read_decode: Literal["auto", "fused", "separate"] = "auto"
    """How the batch job reads and decodes: ``separate`` read tasks and decode tasks (decoding of one file spreads
    over as many tasks as the cluster has room for), ``fused`` (each file read and decoded in one task: a worker
    process fewer, no hand-over between the two), or ``auto``: fused on a private cluster with room for at most one
    decode task beside the model pool, where a separate stage buys no parallelism; separate everywhere else (a shared
    cluster may grow)."""
    actor_pool_min: Annotated[int, Field(ge=1)] = 1
    actor_pool_max: Annotated[int, Field(ge=1)] = 1
    actor_max_restarts: Annotated[int, Field(ge=-1)] = 0
    """Restarts of a crashed batch-job pool actor (-1: forever, Ray Data's own default). 0 by default: a failed
    batch job is rerun and resumes (completed batches are skipped); with restarts Ray logs an E-level line per actor
    because Ray Data hands the stage to its actors by object reference."""

    @model_validator(mode="after")
    def _pool(self) -> RayConfig:
        if self.actor_pool_max < self.actor_pool_min:
            raise ValueError(f"actor_pool_max ({self.actor_pool_max}) must be >= actor_pool_min "
                             f"({self.actor_pool_min})")
        return self


class ServeConfig(Section):
    """The Ray Serve deployment: HTTP, request batching and replica autoscaling."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    min_replicas: Annotated[int, Field(ge=0)] = 1
    initial_replicas: Annotated[int, Field(ge=0)] | None = None
    max_replicas: Annotated[int, Field(ge=1)] = 2
    target_ongoing_requests: Annotated[float, Field(gt=0)] = 2.0
    upscale_delay_s: Annotated[float, Field(ge=0)] = 2.0
    downscale_delay_s: Annotated[float, Field(ge=0)] = 30.0
    max_ongoing_requests: Annotated[int, Field(ge=1)] = 16
    max_batch_size: Annotated[int, Field(ge=1)] = 16
    """``@serve.batch``: single HTTP requests are grouped into model batches of up to this many images ..."""
    batch_wait_timeout_s: Annotated[float, Field(ge=0)] = 0.01
    """... waiting at most this long for a batch to fill."""
    max_request_bytes: Annotated[int, Field(ge=1)] = 16 * MiB
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    """A request body must have fully arrived this long after the request reached the replica, else 408."""
    body_grace_s: Annotated[float, Field(ge=0)] = 0.5
    """A body still arriving after this long needs one of ``max_slow_bodies`` slots to go on (else 429)."""
    max_slow_bodies: Annotated[int, Field(ge=1)] = 4
    """Per replica: bodies allowed to arrive slowly at once; keep it well below ``max_ongoing_requests`` so that
    clients trickling their bodies cannot take every request slot of a replica."""
    graceful_shutdown_wait_loop_s: Annotated[float, Field(gt=0)] = 2.0
    """A replica being stopped (downscale, redeploy, shutdown) gets no new requests and checks this often whether
    its requests in flight have finished."""
    graceful_shutdown_timeout_s: Annotated[float, Field(gt=0)] = 20.0
    """... and is stopped once they have, or after this long at the latest (see docs/hardening.md)."""

    @property
    def starting_replicas(self) -> int:
        """Replicas Serve starts with (at least one)."""
        initial = self.initial_replicas if self.initial_replicas is not None else self.min_replicas
        return max(1, initial)

    @model_validator(mode="after")
    def _replicas(self) -> ServeConfig:
        if self.max_slow_bodies >= self.max_ongoing_requests:
            raise ValueError(f"max_slow_bodies ({self.max_slow_bodies}) must be below max_ongoing_requests "
                             f"({self.max_ongoing_requests}), or slow clients can take every request slot")
        initial = self.initial_replicas if self.initial_replicas is not None else self.min_replicas
        if not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(f"need min_replicas ({self.min_replicas}) <= initial_replicas ({initial}) <= "
                             f"max_replicas ({self.max_replicas})")
        return self


class StreamConfig(Section):
    """The stream job: consumer actors (Kafka by default) feeding the Serve deployment."""

    source: str = "kafka"
    """The streaming connector (:data:`cola_moderation.connectors.registry.STREAM_CONNECTORS`); its settings are
    the config section of the same name."""
    consumers: Annotated[int, Field(ge=1, le=256)] = 1
    """Consumer actors in one group (more than the input partitions leaves some idle)."""
    consumer_num_cpus: Annotated[float, Field(gt=0)] = 0.25
    max_in_flight: Annotated[int, Field(ge=1, le=64)] = 2
    """Batches per consumer sent to the deployment before the oldest must be written (pipelining lets Serve see
    the stream's load and overlaps Kafka I/O with the model)."""
    processing_retry_s: Annotated[float, Field(ge=0)] = 120.0
    """A batch whose moderation call fails (a replica lost or restarting: ``ActorDiedError``) is sent again, with
    backoff, until this long after its first failure; then the job stops with exit code 2 (nothing of the batch is
    committed, so a restart re-reads it). 0 = no retry."""
    broker_retry_s: Annotated[float, Field(ge=0)] = 60.0
    """A batch whose write to Kafka fails (broker unreachable) is written again, with backoff, until this long after
    the first failure (each attempt waits up to ``kafka.flush_timeout_s``); then the job stops with exit code 2 and
    one line naming the cause. 0 = no retry."""
    retry_backoff_s: Annotated[float, Field(gt=0)] = 0.5
    """First wait between attempts; doubles per attempt up to ``retry_max_backoff_s``."""
    retry_max_backoff_s: Annotated[float, Field(gt=0)] = 5.0

    @field_validator("source")
    @classmethod
    def _registered_source(cls, value: str) -> str:
        return registered(value, STREAM_CONNECTORS)
