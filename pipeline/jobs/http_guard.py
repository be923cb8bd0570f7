"""ASGI middleware for Serve's HTTP proxy: whole bodies and clean headers before a request reaches a replica.

Bodies (:class:`BodyGuard`): Serve hands a request to a replica as soon as its headers arrived, and the replica
pulls the body from the proxy; a client that trickles its body would hold one of the replica's
``serve.max_ongoing_requests`` slots all along (about 40 such clients locked every other request out, ``/healthz``
included). The guard reads each body in the proxy first, where a waiting connection costs a coroutine: a body must
arrive within ``COLA_PROXY_BODY_TIMEOUT_S`` (default 30 s, else 408); one not complete after 0.5 s needs one of
``COLA_PROXY_MAX_SLOW_BODIES`` slots (default 64 per proxy, else 429 at once); bodies over
``COLA_PROXY_MAX_BODY_BYTES`` (default 64 MiB) get 413. The replica then receives the body in one piece (and applies
``serve.max_request_bytes`` and its own, smaller slow-body limits).

Headers (:class:`HeaderGuard`):

Ray Serve's proxy decodes some request headers as UTF-8 before any application code runs (``x-request-id``, the
session-id and multiplexed-model-id headers, tracing headers) and answers 500 when one is not UTF-8; it also lets a
client set its own request timeout (``x-request-timeout-seconds``) or disable disconnect handling. This middleware,
installed in the proxy, drops:

* ``x-request-timeout-seconds`` and ``x-request-disconnect-disabled`` (server settings, not the client's to choose);
* any of the other Serve-interpreted headers whose value is not printable ASCII (the proxy then makes its own
  request id; the app validates ids again, see :func:`~cola_moderation.pipeline.jobs.http_inputs.request_id`).

Installed through Serve's documented hook: ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=
cola_moderation.pipeline.jobs.http_guard:proxy_middlewares`` in the environment of the proxy's process.
:func:`~cola_moderation.pipeline.jobs.ray_runtime.init_ray` sets it for private clusters; on an existing cluster set it
in the Ray nodes' environment (e.g. the KubeRay container env).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from cola_moderation.pipeline.jobs.http_inputs import BodyReader, RequestError

PROXY_CALLBACK = "cola_moderation.pipeline.jobs.http_guard:proxy_middlewares"
DROPPED = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})
CHECKED = frozenset({b"x-request-id", b"serve_multiplexed_model_id", b"x_session_id", b"traceparent",
                     b"tracestate"})
_PRINTABLE = re.compile(rb"^[\x20-\x7e]*$")


def clean_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` (ASGI scope form) without the Serve-interpreted headers described in the module docstring."""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        normal = lowered.replace(b"-", b"_")
        if lowered in DROPPED or lowered.startswith(b"x-serve-router-"):
            continue
        if (lowered in CHECKED or normal in CHECKED) and not _PRINTABLE.match(value):
            continue
        kept.append((name, value))
    return kept


class HeaderGuard:
    """Pure ASGI middleware applying :func:`clean_headers` to every HTTP and websocket request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            scope = {**scope, "headers": clean_headers(list(scope.get("headers") or ()))}
        await self.app(scope, receive, send)


class BodyGuard:
    """Pure ASGI middleware: reads a request's whole body (see the module docstring), then hands the request on with
    a ``receive`` that replays it."""

    def __init__(self, app: Any, *, max_bytes: int, timeout_s: float, max_slow: int) -> None:
        self.app = app
        self.reader = BodyReader(max_bytes=max_bytes, timeout_s=timeout_s, grace_s=0.5, max_slow=max_slow,
                                 where="proxy")
        self.reader.size_setting = "COLA_PROXY_MAX_BODY_BYTES"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        declared = next((v.decode("latin-1") for k, v in scope.get("headers") or () if k.lower() == b"content-length"),
                        None)
        try:
            messages = await self.reader.read_messages(receive, declared, started=started)
        except RequestError as exc:
            body = json.dumps(exc.body()).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            if exc.status == 429:
                headers.append((b"retry-after", b"1"))
            await send({"type": "http.response.start", "status": exc.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        pending = [{"type": "http.request", "body": b"".join(m.get("body", b"") for m in messages),
                    "more_body": False}]

        async def replay() -> Any:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


def proxy_middlewares() -> list[Any]:
    """Serve's proxy callback: the middlewares to install in the HTTP proxy (header guard outermost)."""
    from starlette.middleware import Middleware

    env = os.environ
    body = Middleware(BodyGuard, max_bytes=int(env.get("COLA_PROXY_MAX_BODY_BYTES", 64 << 20)),
                      timeout_s=float(env.get("COLA_PROXY_BODY_TIMEOUT_S", 30)),
                      max_slow=int(env.get("COLA_PROXY_MAX_SLOW_BODIES", 64)))
    return [body, Middleware(HeaderGuard)]
