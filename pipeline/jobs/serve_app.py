"""The moderation service on Ray Serve: one autoscaled deployment for HTTP uploads and the stream job.

Deployment ``moderation`` in application ``cola-moderation`` (:data:`DEPLOYMENT_NAME`, :data:`APP_NAME`). Each replica
builds a :class:`~cola_moderation.pipeline.runtime.worker.ModerationWorker` (decode + CLIP/COLA + detector + policy) in
its own process at start-up; only the config is pickled. Replica resources come from ``ray.worker_num_cpus`` /
``worker_num_gpus`` / ``worker_resources``; ``serve.min_replicas`` / ``initial_replicas`` / ``max_replicas`` /
``target_ongoing_requests`` / ``upscale_delay_s`` / ``downscale_delay_s`` drive Serve's autoscaler and
``serve.max_ongoing_requests`` caps each replica's queue. One thread per replica runs the model, so HTTP batches and
stream batches take turns instead of fighting over the CPU threads; a second one decodes, so the next batch is decoded
while this one is in the model.

HTTP (``serve.host``:``serve.port``, 127.0.0.1:8000 by default):

* ``POST /v1/moderate`` - one image as a raw body (``image/*``, ``application/octet-stream``; ``?id=``), as
  ``multipart/form-data`` (file part ``image``; text parts ``id``, ``metadata``) or as JSON
  ``{"image_b64", "id", "metadata"}``. Concurrent requests are grouped by ``@serve.batch`` into model batches of up
  to ``serve.max_batch_size`` images, waiting at most ``serve.batch_wait_timeout_s``. 200: the output record (schema
  v2, :mod:`cola_moderation.pipeline.runtime.records`) plus ``"route": "output" | "quarantine"``. Errors are JSON
  ``{"error": {"status", "code", "message"}}``: 400 bad request body (also JSON deeper than 16 levels or with
  ``NaN``), 408 body not received within ``serve.body_timeout_s``, 413 over ``serve.max_request_bytes``, 415
  unsupported content type, 422 not a decodable image (the decoder's message), 429 too many slow bodies
  (``serve.max_slow_bodies``, see :mod:`cola_moderation.pipeline.jobs.http_inputs`). User errors are never 5xx; headers
  Serve's proxy would choke on are dropped by :mod:`cola_moderation.pipeline.jobs.http_guard`. Responses are standard
  JSON (non-finite numbers as strings).
* ``GET /v1/labels`` - ``{"labels", "model", "method", "policy_version"}``.
* ``GET /healthz`` - ``{"status": "ok", "model", "replica"}`` once the replica's model is loaded.

Handle API (the stream job)::

    handle = moderation_handle()                      # after deploy_moderation(...)
    result = handle.process_records.remote(records, received_at).result()

``process_records(records: list[InputRecord], received_at: float | None = None) -> WorkerResult`` moderates a whole
batch (no ``@serve.batch`` regrouping); ``received_at`` is the ``time.time()`` the batch was polled and feeds each
record's ``latency_ms``. ``result.outcomes`` holds one ``Routed | DeadLetter`` per record, in input order.

Entry points: :func:`deploy_moderation` (``cola serve``, the stream job with ``http=False``), :func:`app_builder`
(typed by :class:`AppArgs`: ``serve run cola_moderation.pipeline.serve_app:app_builder config=reference``, Serve
config files / KubeRay ``serveConfigV2``: ``import_path: cola_moderation.pipeline.serve_app:app_builder``,
``args: {config: PATH}``), :func:`moderation_handle`, :func:`shutdown_moderation`.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route methods' annotations (``Request``) at run
# time, and Serve's class-based views cannot resolve string annotations.
import asyncio
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from cola_moderation.connectors.json_codec import dumps_compact
from cola_moderation.connectors.records import DeadLetter, InputRecord, Routed
from cola_moderation.operators.errors import ColaError, ConfigError
from cola_moderation.pipeline.jobs.http_inputs import BodyReader, RequestError, parse_upload, request_id
from cola_moderation.pipeline.jobs.ray_runtime import check_worker_resources, init_ray, worker_options
from cola_moderation.pipeline.runtime.config import PipelineConfig
from cola_moderation.pipeline.runtime.records import OutputRecord
from cola_moderation.pipeline.runtime.worker import ModerationWorker, WorkerResult

log = logging.getLogger(__name__)

APP_NAME = "cola-moderation"
DEPLOYMENT_NAME = "moderation"

api = FastAPI(title="cola-moderation", docs_url=None, redoc_url=None)

ReplicaOutcome = Routed[OutputRecord] | DeadLetter
"""What the HTTP batch handler returns per request: a routed output record, or the dead letter of an input."""


class StrictJSONResponse(JSONResponse):
    """Standard JSON bodies: non-finite floats written as strings instead of failing the response (500)."""

    def render(self, content: Any) -> bytes:
        return dumps_compact(content)


class ServeDeployError(ColaError, RuntimeError):
    """The moderation deployment did not come up (its replicas failed to start)."""

    stage = "serve"


class ModerationReplica:
    """One replica: the worker, built here (not pickled), behind HTTP routes and a handle method. Wrapped into the
    :data:`ModerationDeployment` below; kept a plain module-level class so Ray pickles it by reference."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.worker = ModerationWorker(config, job="serve")
        self.worker.start()  # load the model now: the replica reports healthy only once it can serve
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="cola-model")
        # decoding runs beside the model: the next batch decodes (PIL releases the GIL) while this one is encoded
        self._decode_thread = ThreadPoolExecutor(1, thread_name_prefix="cola-decode")
        serve_config = config.serve
        self.bodies = BodyReader(max_bytes=serve_config.max_request_bytes, timeout_s=serve_config.body_timeout_s,
                                 grace_s=serve_config.body_grace_s, max_slow=serve_config.max_slow_bodies)
        batcher: Any = self.moderate_one  # @serve.batch's wrapper carries the setters
        batcher.set_max_batch_size(config.serve.max_batch_size)
        batcher.set_batch_wait_timeout_s(config.serve.batch_wait_timeout_s)

    async def process_records(self, records: list[InputRecord], received_at: float | None = None) -> WorkerResult:
        """Moderate a whole batch of records (the stream job's entry point)."""
        return await self._process(list(records), received_at)

    async def _process(self, records: list[InputRecord], received_at: float | None) -> WorkerResult:
        """Decode on the decode thread, then moderate on the model thread: two batches in the replica overlap
        (one decoding, one in the model), each thread still one batch at a time."""
        loop = asyncio.get_running_loop()
        decode_started = time.perf_counter()
        decoded = await loop.run_in_executor(self._decode_thread, partial(self.worker.decode, records))
        decode_seconds = time.perf_counter() - decode_started

        def moderate() -> WorkerResult:  # model time counts from here, plus the decoding (not the wait between)
            return self.worker.process_decoded(records, decoded, received_at=received_at,
                                               started=time.perf_counter() - decode_seconds)

        return await loop.run_in_executor(self._model_thread, moderate)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)  # replaced from serve.* config in __init__
    async def moderate_one(self, items: list[tuple[InputRecord, float]]) -> list[ReplicaOutcome]:
        """Batch handler: ``items[i]`` = (record, time.time() it was received) -> verdict ``i``, same length."""
        records = [record for record, _ in items]
        batch_received = min(received for _, received in items)
        result = await self._process(records, batch_received)
        verdicts: list[ReplicaOutcome] = []
        for (_, received), outcome in zip(items, result.outcomes, strict=True):
            if isinstance(outcome, Routed):  # latency from this request's own receipt, not the batch's
                latency = round(max(0.0, outcome.record.latency_ms - (received - batch_received) * 1000.0), 3)
                outcome = Routed(outcome.route, replace(outcome.record, latency_ms=latency))
            verdicts.append(outcome)
        return verdicts

    @api.post("/v1/moderate")
    async def moderate(self, request: Request) -> JSONResponse:
        received_at, started = time.time(), time.monotonic()
        try:
            upload = await parse_upload(request, max_bytes=self.config.serve.max_request_bytes, reader=self.bodies,
                                        started=started)
        except RequestError as exc:
            headers = {"Retry-After": "1"} if exc.status == 429 else None
            return StrictJSONResponse(exc.body(), status_code=exc.status, headers=headers)
        except Exception as exc:  # noqa: BLE001 - whatever a client sends is a 4xx, never a 500
            error = RequestError(400, "bad_request", f"the request could not be parsed: {type(exc).__name__}")
            return StrictJSONResponse(error.body(), status_code=400)
        verdict = await self.moderate_one((upload.to_record(request_id(request.headers)), received_at))
        if isinstance(verdict, DeadLetter):
            error = RequestError(422, "undecodable_image", verdict.error_message)
            return StrictJSONResponse({"error": {**error.body()["error"], "class": verdict.error_class,
                                                 "stage": verdict.error_stage}}, status_code=422)
        return StrictJSONResponse({**verdict.record.to_json(), "route": verdict.route.value})

    @api.get("/v1/labels")
    async def labels(self) -> dict[str, Any]:
        return {"labels": list(self.worker.labels), "model": self.worker.model_name, "method": self.config.method,
                "policy_version": self.worker.policy.version}

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.worker.model_name,
                "replica": serve.get_replica_context().replica_id.unique_id}

    def __del__(self) -> None:  # Serve calls this when it stops the replica
        for name in ("_decode_thread", "_model_thread"):
            thread = getattr(self, name, None)
            if thread is not None:
                thread.shutdown(wait=False, cancel_futures=True)
        if hasattr(self, "worker"):
            self.worker.close()


ModerationDeployment = serve.deployment(name=DEPLOYMENT_NAME)(serve.ingress(api)(ModerationReplica))


def deployment_options(config: PipelineConfig, *, access_log: bool = True) -> dict[str, Any]:
    """Serve options of the moderation deployment, from the ``serve:`` and ``ray:`` sections. ``access_log``: the
    replica's line per call (method, status, milliseconds); the stream job turns it off (a call per batch, dozens a
    second, each line written by the replica and forwarded to the driver's console)."""
    s = config.serve
    autoscaling = {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                   "target_ongoing_requests": s.target_ongoing_requests, "upscale_delay_s": s.upscale_delay_s,
                   "downscale_delay_s": s.downscale_delay_s}
    if s.initial_replicas is not None:
        autoscaling["initial_replicas"] = s.initial_replicas
    options = {"name": DEPLOYMENT_NAME, "autoscaling_config": autoscaling,
               "max_ongoing_requests": s.max_ongoing_requests, "ray_actor_options": worker_options(config.ray),
               "graceful_shutdown_wait_loop_s": s.graceful_shutdown_wait_loop_s,
               "graceful_shutdown_timeout_s": s.graceful_shutdown_timeout_s}
    if not access_log:  # only then: a deployment's own logging_config replaces the app's (e.g. KubeRay's JSON logs)
        options["logging_config"] = {"enable_access_log": False}
    return options


def build_app(config: PipelineConfig, *, access_log: bool = True) -> Application:
    """The bound Serve application (deploy it with :func:`deploy_moderation` or ``serve.run``)."""
    deployment: Any = ModerationDeployment  # a serve.Deployment at run time
    return deployment.options(**deployment_options(config, access_log=access_log)).bind(config)


class AppArgs(BaseModel):
    """Arguments of :func:`app_builder` (``serve run ...:app_builder config=C``, or ``args:`` of a Serve config
    file); Serve validates them against this model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: str
    """Pipeline config: a YAML path (on the cluster's nodes) or a bundled config name (``reference``,
    ``moderation``)."""


def app_builder(args: AppArgs) -> Application:
    """Typed Serve application builder: the moderation app for ``args.config``.

    ``serve run cola_moderation.pipeline.serve_app:app_builder config=reference``, or in a Serve config file (e.g. a
    KubeRay RayService's ``serveConfigV2``) ``import_path: cola_moderation.pipeline.serve_app:app_builder``,
    ``args: {config: PATH}``. Runs inside an existing cluster, so it neither starts Ray nor checks resources: on an
    autoscaling cluster the Ray autoscaler adds the nodes the replicas need.
    """
    from cola_moderation.pipeline.runtime.config import load_config

    if not isinstance(args, AppArgs):  # called directly with a mapping
        try:
            args = AppArgs.model_validate(args)
        except ValidationError as exc:
            raise ConfigError(f"application args: expected {{config: PATH_OR_NAME}}: {exc}") from None
    return build_app(load_config(args.config))


def deploy_moderation(config: PipelineConfig, *, address: str | None = None, host: str | None = None,
                      port: int | None = None, http: bool = True) -> DeploymentHandle:
    """Start/join Ray, check the cluster can host ``serve.max_replicas`` replicas, deploy, and wait until the
    replicas are up. ``http=False`` deploys without an HTTP proxy and without the replicas' access log (handle calls
    only, e.g. the stream job); else the proxy listens on ``host``/``port`` (default ``serve.host``/``serve.port``).
    Returns the deployment handle."""
    init_ray(config.ray, address=address)
    check_worker_resources(config.ray, workers=config.serve.starting_replicas, max_workers=config.serve.max_replicas)
    if http:
        serve.start(http_options={"host": host or config.serve.host, "port": port or config.serve.port})
    else:
        serve.start(proxy_location="Disabled")
    try:
        handle = serve.run(build_app(config, access_log=http), name=APP_NAME, route_prefix="/" if http else None)
    except RuntimeError as exc:  # replicas failed in __init__ (bad model path, device, ...)
        raise ServeDeployError(f"the moderation deployment failed to start: {_root_cause(exc)}") from exc
    log.info("deployed %s/%s (%s..%s replicas)%s", APP_NAME, DEPLOYMENT_NAME, config.serve.min_replicas,
             config.serve.max_replicas,
             f" on http://{host or config.serve.host}:{port or config.serve.port}" if http else " (handle only)")
    return handle


def moderation_handle() -> DeploymentHandle:
    """Handle to the deployed moderation deployment (``.process_records.remote(records, received_at)``)."""
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)


def uses_private_cluster(config: PipelineConfig, address: str | None = None) -> bool:
    """Whether :func:`~cola_moderation.pipeline.jobs.ray_runtime.init_ray` starts a private cluster (vs. joining an
    existing one)."""
    return not (address or config.ray.address or os.environ.get("RAY_ADDRESS"))


def shutdown_moderation(*, private_cluster: bool) -> None:
    """On a private cluster shut Serve and Ray down; on a shared one delete only this application."""
    import ray

    if not ray.is_initialized():
        return
    if private_cluster:
        # the application first, while the HTTP proxy still runs: its replicas finish the requests in flight
        # (serve.graceful_shutdown_*); serve.shutdown alone stops proxies and replicas together and cuts them
        try:
            serve.delete(APP_NAME)
        except Exception as exc:  # noqa: BLE001 - Serve never started (the deploy was refused): nothing to drain
            log.debug("no Serve application to delete before shutdown: %s", exc)
        # serve.shutdown() also stops this process's deployment-handle routers: without it their metrics threads
        # outlive ray.shutdown() and a later ray.init in the same process fails ("ray.init twice"). On Ray 2.60 it
        # prints "(raylet) Task ServeController.graceful_shutdown failed ... killed by ray.kill" (the controller ends
        # itself inside that task); harmless.
        serve.shutdown()
        ray.shutdown()
    else:
        serve.delete(APP_NAME)


_ERROR_LINE = re.compile(r"^\s*(?:\x1b\[[0-9;]*m)?([\w.]+(?:Error|Exception)): (.+)$")


def _root_cause(exc: BaseException) -> str:
    """The replicas' own error (preferring this project's errors) from the deployment status, else ``exc``."""
    text = str(exc)
    try:
        app = serve.status().applications.get(APP_NAME)
        if app is not None and DEPLOYMENT_NAME in app.deployments:
            text = app.deployments[DEPLOYMENT_NAME].message + "\n" + text
    except Exception:  # noqa: BLE001 - best effort: the status call itself may fail on a broken cluster
        pass
    errors = [match.groups() for match in map(_ERROR_LINE.match, text.splitlines()) if match]
    ours = [(name, message) for name, message in errors if name.startswith("cola_moderation.")]
    if ours or errors:
        name, message = (ours or errors)[-1]
        return f"{name.rsplit('.', 1)[-1]}: {message}"
    return text.strip().splitlines()[0] if text.strip() else repr(exc)
