"""The review console: a Starlette app (HTTP API + one static page), run by uvicorn on 127.0.0.1.

API (every route needs a token, see :mod:`.auth`; JSON unless said otherwise):

* ``GET /login?token=T`` sets the session cookie and redirects to ``/`` (401 for a bad token);
* ``GET /`` the page; ``GET /static/review.js``, ``/static/review.css``;
* ``GET /api/session`` -> ``{reviewer, csrf, labels, decisions}``;
* ``GET /api/items?status=pending|done|all`` -> ``{items: [...], counts: {pending, done, total}}``;
* ``GET /api/items/{id}`` -> the item (record fields, metadata, status, every decision on it);
* ``GET /api/items/{id}/image`` -> ``image/png`` re-encoded from the record's source;
* ``POST /api/items/{id}/decision`` with ``{"decision": "confirm|relabel|adversarial|allow", "label": ...,
  "note": ...}`` and ``X-CSRF-Token`` -> 201 ``{decision, created: true}`` for a new decision or revision, 200
  ``{decision, created: false}`` when this reviewer already made exactly this decision.

``{id}`` is one path segment, percent-encoded (``encodeURIComponent``); ids are looked up among the records, never
used as paths, so ``/api/items/../../etc/passwd/image`` and the like are 404. Every answer carries a strict
Content-Security-Policy (no inline script, images only from the console itself) and ``nosniff``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from cola_moderation.connectors.errors import SinkWriteError
from cola_moderation.pipeline.jobs.review.auth import CSRF_HEADER, SESSION_COOKIE, Authenticator, Session
from cola_moderation.pipeline.jobs.review.decision_log import DecisionLog
from cola_moderation.pipeline.jobs.review.items import ImageUnavailable, ItemStore, ReviewItem
from cola_moderation.pipeline.runtime.decisions import DECISIONS, DecisionKind

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()), (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"), (b"cache-control", b"no-store"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
MAX_BODY_BYTES = 16 * 1024
MAX_NOTE_CHARS = 2000
ITEMS_PREFIX = "/api/items/"
STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}


@dataclass
class ReviewConsole:
    """What the app serves: the items, the decision log, the taxonomy, the authenticator."""

    items: ItemStore
    decisions: DecisionLog
    labels: tuple[str, ...]
    auth: Authenticator


def _static(name: str) -> bytes:
    return resources.files("cola_moderation.pipeline.jobs.review").joinpath("static", name).read_bytes()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def item_json(console: ReviewConsole, item: ReviewItem, *, full: bool) -> dict[str, Any]:
    record = item.record
    history = console.decisions.history(record.id)
    data: dict[str, Any] = {
        "id": record.id, "label": record.label, "score": record.score,
        "topk": [{"label": label, "score": score} for label, score in record.topk], "action": record.action,
        "adversarial_score": record.adversarial_score, "suspected_adversarial": record.suspected_adversarial,
        "review_reasons": list(record.review_reasons), "status": "done" if history else "pending",
        "last_decision": history[-1].decision if history else None,
    }
    if full:
        full_record = record.to_json()
        data.update(method=record.method, model=record.model, policy_version=record.policy_version,
                    processed_at=full_record["processed_at"], source=full_record["source"],
                    metadata=json.loads(json.dumps(full_record["metadata"], default=str)),
                    decisions=[d.to_json() for d in history])
    return data


def final_label(console: ReviewConsole, item: ReviewItem, decision: DecisionKind, label: Any) -> str | None:
    """The label after review (see the decision record's schema); raises ValueError for a bad request."""
    if label is not None and (not isinstance(label, str) or label not in console.labels):
        raise ValueError("label must be one of the taxonomy's labels")
    if decision == "confirm":
        return item.record.label
    if decision == "relabel":
        if label is None:
            raise ValueError("relabel needs a label")
        return str(label)
    return None if label is None else str(label)


def build_app(console: ReviewConsole) -> Any:
    """The ASGI app: routes behind :class:`Guard`."""

    async def login(request: Request) -> Response:
        session_id = console.auth.login(request.query_params.get("token"))
        if session_id is None:
            return _error(401, "unauthorized")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="strict", path="/")
        return response

    async def page(request: Request) -> Response:
        return Response(_static("index.html"), media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return _error(404, "not found")
        return Response(_static(name), media_type=STATIC[name])

    async def session(request: Request) -> Response:
        current: Session = request.scope["cola.session"]
        return JSONResponse({"reviewer": current.reviewer, "csrf": current.csrf, "labels": list(console.labels),
                             "decisions": list(DECISIONS)})

    async def list_items(request: Request) -> Response:
        status = request.query_params.get("status", "pending")
        if status not in ("pending", "done", "all"):
            return _error(400, "status must be pending, done or all")
        decided = console.decisions.decided_ids()
        every = console.items.items()
        done = sum(1 for item in every if item.record.id in decided)
        chosen = [item for item in every if status == "all" or (item.record.id in decided) == (status == "done")]
        return JSONResponse({"items": [item_json(console, item, full=False) for item in chosen],
                             "counts": {"pending": len(every) - done, "done": done, "total": len(every)}})

    async def item_route(request: Request) -> Response:
        target = _item_target(request)
        if target is None:
            return _error(404, "not found")
        item_id, action = target
        item = console.items.get(item_id)
        if item is None:
            return _error(404, "not found")
        if action is None and request.method == "GET":
            return JSONResponse(item_json(console, item, full=True))
        if action == "image" and request.method == "GET":
            try:
                png = console.items.image_png(item)
            except ImageUnavailable as exc:
                log.warning("%s", exc)
                return _error(404, "image unavailable")
            return Response(png, media_type="image/png")
        if action == "decision" and request.method == "POST":
            return await _decide(request, item)
        return _error(405, "method not allowed")

    async def _decide(request: Request, item: ReviewItem) -> Response:
        current: Session = request.scope["cola.session"]
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, "body too large")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "body must be JSON")
        if not isinstance(data, dict) or data.get("decision") not in DECISIONS:
            return _error(400, f"decision must be one of {list(DECISIONS)}")
        note = data.get("note") or ""
        if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
            return _error(400, f"note must be a string of at most {MAX_NOTE_CHARS} characters")
        decision: DecisionKind = data["decision"]
        try:
            label = final_label(console, item, decision, data.get("label"))
        except ValueError as exc:
            return _error(400, str(exc))
        try:
            outcome = console.decisions.decide(item.record, reviewer=current.reviewer, decision=decision,
                                               final_label=label, note=note)
        except SinkWriteError as exc:
            log.error("decision on %r not recorded: %s", item.record.id, exc)
            return _error(503, "the decision could not be recorded; try again")
        return JSONResponse({"decision": outcome.record.to_json(), "created": outcome.created},
                            status_code=201 if outcome.created else 200)

    app = Starlette(routes=[
        Route("/login", login, methods=["GET"]),
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/session", session, methods=["GET"]),
        Route("/api/items", list_items, methods=["GET"]),
        Route("/api/items/{rest:path}", item_route, methods=["GET", "POST"]),
    ])
    return Guard(app, console.auth)


def _item_target(request: Request) -> tuple[str, str | None] | None:
    """``(id, None | "image" | "decision")`` from the raw (still percent-encoded) path, or None."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    path = raw.split(b"?", 1)[0].decode("latin-1")
    if not path.startswith(ITEMS_PREFIX):
        return None
    parts = path[len(ITEMS_PREFIX):].split("/")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] not in ("image", "decision")) or not parts[0]:
        return None
    try:
        item_id = unquote(parts[0], errors="strict")
    except UnicodeDecodeError:
        return None
    return item_id, parts[1] if len(parts) == 2 else None


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Guard:
    """Pure ASGI middleware in front of every route: authentication (401), CSRF and origin checks on POST (403),
    and the security headers on every answer."""

    def __init__(self, app: Any, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return  # no websockets

        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        if scope["path"] != "/login" or scope["method"] != "GET":  # /login checks the token it is given
            session = self._session(headers)
            if session is None:
                await _send_json(send_secured, 401, {"error": "unauthorized"},
                                 [(b"www-authenticate", b'Bearer realm="cola review"')])
                return
            if scope["method"] not in ("GET", "HEAD"):
                refused = self._refused(scope, headers, session)
                if refused:
                    await _send_json(send_secured, 403, {"error": refused})
                    return
                length = headers.get(b"content-length", b"0")
                if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                    await _send_json(send_secured, 413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
                    return
            scope = {**scope, "cola.session": session}
        await self.app(scope, receive, send_secured)

    def _session(self, headers: dict[bytes, bytes]) -> Session | None:
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if authorization[:7].lower() == "bearer ":
            return self.auth.from_bearer(authorization[7:].strip())
        cookies = headers.get(b"cookie", b"").decode("latin-1")
        for part in cookies.split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE:
                return self.auth.from_cookie(value)
        return None

    def _refused(self, scope: dict[str, Any], headers: dict[bytes, bytes], session: Session) -> str | None:
        if not self.auth.csrf_ok(session, headers.get(CSRF_HEADER.encode(), b"").decode("latin-1") or None):
            return "missing or wrong CSRF token (X-CSRF-Token; GET /api/session returns it)"
        origin = headers.get(b"origin")
        host = headers.get(b"host", b"")
        if origin is not None and origin not in (b"http://" + host, b"https://" + host):
            return "cross-origin request refused"
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            return "content-type must be application/json"
        return None


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": payload})
