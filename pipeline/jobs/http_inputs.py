"""Turning a ``POST /v1/moderate`` request into an :class:`~cola_moderation.connectors.records.InputRecord`, or a
specific 4xx.

Accepted bodies (the ``Content-Type`` header picks the form; none means raw bytes):

* raw image bytes: ``image/*`` or ``application/octet-stream``; optional ``?id=`` query parameter;
* ``multipart/form-data``: a file part named ``image``; optional text fields ``id`` and ``metadata`` (a JSON object);
* ``application/json``: ``{"image_b64": "<base64, a data: URL is fine>", "id": "...", "metadata": {...}}``.

Every problem with the request itself raises :class:`RequestError` with the HTTP status to answer: 400 (empty body,
bad base64/JSON/multipart, wrong field types, JSON nested deeper than :data:`JSON_MAX_DEPTH` or holding ``NaN`` /
``Infinity``), 408 (the body did not arrive within ``serve.body_timeout_s``), 413 (over ``serve.max_request_bytes``),
415 (other content types), 429 (``serve.max_slow_bodies`` bodies are already arriving slowly). Whether the bytes are
an image is the decoder's call, later (422 there).

Slow bodies (:class:`BodyReader`): a body that has not fully arrived ``serve.body_grace_s`` after the request reached
the replica needs one of ``serve.max_slow_bodies`` slots to go on arriving (else 429 at once), and must be complete
within ``serve.body_timeout_s`` (else 408). So clients that send headers and then trickle their bodies hold at most
that many of a replica's ``serve.max_ongoing_requests``, each for a bounded time, and the rest stay free for other
requests and ``/healthz``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from cola_moderation.connectors.json_codec import JsonInputError, loads_strict
from cola_moderation.connectors.records import HttpPosition, InputRecord
from cola_moderation.operators.errors import ColaError

JSON_MAX_DEPTH = 16
"""Deepest nesting accepted in a JSON body or metadata field (objects and arrays)."""
JSON_FIELDS = frozenset({"image_b64", "id", "metadata"})
RAW_TYPES = ("application/octet-stream",)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_DATA_URL = re.compile(r"^data:[\w.+\-]+/[\w.+\-]+(;[\w\-]+=[\w.\-]+)*;base64,", re.ASCII)


class RequestError(ColaError, ValueError):
    """A bad request: ``status`` is the HTTP status to answer, ``code`` a stable machine-readable name."""

    stage = "request"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": {"status", "code", "message"}}``."""
        return {"error": {"status": self.status, "code": self.code, "message": str(self)}}


@dataclass(frozen=True)
class Upload:
    """One image upload as the client sent it; ``id`` is None when the client gave none."""

    payload: bytes
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_record(self, request_id: str) -> InputRecord:
        """The pipeline's input record; without a client id the id is ``http:<request_id>``."""
        position = HttpPosition(request_id)
        return InputRecord(self.id or position.default_id(), self.payload, dict(self.metadata), position)


def request_id(headers: Mapping[str, str]) -> str:
    """The client's ``X-Request-ID`` when it is a sane token (<= 128 of ``[A-Za-z0-9._:-]``), else a new uuid4."""
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


class BodyReader:
    """Reads request bodies under a deadline, with a cap on bodies still arriving after a grace period (see the
    module docstring). One per replica, used from its event loop."""

    def __init__(self, *, max_bytes: int, timeout_s: float = 30.0, grace_s: float = 0.5,
                 max_slow: int = 4, where: str = "serve") -> None:
        """``where``: the config prefix named in error messages."""
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.grace_s = min(grace_s, timeout_s)
        self.max_slow = max_slow
        self.where = where
        self.size_setting = f"{where}.max_request_bytes"
        self.slow = 0

    async def read(self, request: Request, *, started: float | None = None) -> bytes:
        """The request body; ``started`` is the ``time.monotonic()`` the request arrived (default: now)."""
        messages = await self.read_messages(request.receive, request.headers.get("content-length"), started=started)
        return b"".join(message.get("body", b"") for message in messages)

    async def read_messages(self, receive: Callable[[], Awaitable[MutableMapping[str, Any]]], declared: str | None,
                            *, started: float | None = None) -> list[MutableMapping[str, Any]]:
        """The ``http.request`` messages of a body from an ASGI ``receive`` (see :meth:`read`)."""
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(400, "bad_content_length",
                                   f"Content-Length must be a byte count, got {declared[:40]!r}")
            if int(declared) > self.max_bytes:
                raise too_large(int(declared), self.max_bytes, setting=self.size_setting)
        started = time.monotonic() if started is None else started
        chunks: list[MutableMapping[str, Any]] = []
        size = 0
        holding = False
        try:
            while True:
                now = time.monotonic()
                if not holding and now >= started + self.grace_s:
                    if self.slow >= self.max_slow:
                        raise RequestError(429, "too_many_slow_bodies",
                                           f"{self.slow} request bodies are already arriving slowly "
                                           f"({self.where}.max_slow_bodies={self.max_slow}); send the body at once "
                                           "or retry")
                    self.slow += 1
                    holding = True
                until = started + (self.timeout_s if holding else self.grace_s)
                try:
                    message = await asyncio.wait_for(receive(), timeout=max(0.0, until - now))
                except TimeoutError:
                    if holding:
                        raise RequestError(408, "body_timeout",
                                           f"the request body did not arrive within {self.timeout_s:g} s "
                                           f"({self.where}.body_timeout_s)") from None
                    continue
                if message["type"] == "http.disconnect":
                    raise RequestError(400, "client_disconnected", "the client closed the connection mid-body")
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    raise too_large(size, self.max_bytes, streamed=True, setting=self.size_setting)
                chunks.append(message)
                if not message.get("more_body", False):
                    return chunks
        finally:
            if holding:
                self.slow -= 1


def too_large(size: int, max_bytes: int, *, streamed: bool = False,
              setting: str = "serve.max_request_bytes") -> RequestError:
    amount = f"more than {max_bytes}" if streamed else str(size)
    return RequestError(413, "request_too_large",
                        f"request body of {amount} bytes exceeds the limit of {max_bytes} bytes ({setting})")


async def parse_upload(request: Request, *, max_bytes: int, reader: BodyReader | None = None,
                       started: float | None = None) -> Upload:
    """Read and parse a moderation request (see the module docstring for the accepted forms). ``reader``: the
    replica's :class:`BodyReader` (default: one with ``max_bytes`` and default limits)."""
    content_type = request.headers.get("content-type", "application/octet-stream")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not (media_type.startswith("image/") or media_type in RAW_TYPES
            or media_type in ("multipart/form-data", "application/json")):
        raise RequestError(415, "unsupported_media_type",
                           f"unsupported Content-Type {media_type!r}: send the image as image/* or "
                           "application/octet-stream, as multipart/form-data (file field 'image'), or as "
                           "application/json {\"image_b64\": ...}")
    reader = reader or BodyReader(max_bytes=max_bytes)
    body = await reader.read(request, started=started)
    if not body:
        raise RequestError(400, "empty_body", "empty request body: expected an image")
    if media_type == "application/json":
        return parse_json_upload(body)
    if media_type == "multipart/form-data":
        return await parse_multipart_upload(request, body)
    return Upload(body, _optional_id(request.query_params.get("id"), "query parameter 'id'"))


def parse_json_upload(body: bytes) -> Upload:
    """``{"image_b64": ..., "id": ..., "metadata": {...}}``; unknown keys are refused by name."""
    try:
        data = loads_strict(body, max_depth=JSON_MAX_DEPTH)
    except JsonInputError as exc:
        raise RequestError(400, exc.code, f"request body is not acceptable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "bad_json", f"JSON body must be an object, got {type(data).__name__}")
    unknown = sorted(set(data) - JSON_FIELDS)
    if unknown:
        raise RequestError(400, "unknown_field", f"unknown JSON field(s) {unknown}; expected {sorted(JSON_FIELDS)}")
    encoded = data.get("image_b64")
    if not isinstance(encoded, str):
        problem = "is missing" if encoded is None else f"must be a base64 string, got {type(encoded).__name__}"
        raise RequestError(400, "missing_image", f"JSON field 'image_b64' {problem}")
    payload = decode_base64(_DATA_URL.sub("", encoded, count=1))
    if not payload:
        raise RequestError(400, "empty_body", "JSON field 'image_b64' is empty: expected an image")
    return Upload(payload, _optional_id(data.get("id"), "JSON field 'id'"),
                  _metadata(data.get("metadata"), "JSON field 'metadata'"))


def decode_base64(text: str) -> bytes:
    """Strict standard or URL-safe base64 (whitespace allowed, padding optional)."""
    compact = "".join(text.split())
    alphabet = b"-_" if ("-" in compact or "_" in compact) else None
    padded = compact + "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(padded, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, "bad_base64", f"JSON field 'image_b64' is not valid base64: {exc}") from None


async def parse_multipart_upload(request: Request, body: bytes) -> Upload:
    """A file part ``image``, optional text parts ``id`` and ``metadata`` (JSON object)."""

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, chunks(), max_files=1, max_fields=16).parse()
    except MultiPartException as exc:
        raise RequestError(400, "bad_multipart", f"malformed multipart/form-data body: {exc}") from None
    try:
        image = form.get("image")
        if image is None:
            raise RequestError(400, "missing_image",
                               f"multipart body has no 'image' part (got {sorted(form.keys())})")
        if not isinstance(image, UploadFile):
            raise RequestError(400, "missing_image",
                               "multipart part 'image' must be a file part (with a filename), not a text field")
        payload = await image.read()
        if not payload:
            raise RequestError(400, "empty_body", "multipart part 'image' is empty: expected an image")
        metadata_text = form.get("metadata")
        if isinstance(metadata_text, UploadFile):
            metadata_text = (await metadata_text.read()).decode("utf-8", errors="replace")
        metadata = _metadata(_json_text(metadata_text, "multipart field 'metadata'"), "multipart field 'metadata'")
        return Upload(payload, _optional_id(form.get("id"), "multipart field 'id'"), metadata)
    finally:
        await form.close()


def _json_text(text: str | None, where: str) -> Any:
    if text is None:
        return None
    try:
        return loads_strict(text, max_depth=JSON_MAX_DEPTH)
    except JsonInputError as exc:
        raise RequestError(400, exc.code, f"{where} is not acceptable JSON: {exc}") from None


def _optional_id(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise RequestError(400, "bad_id", f"{where} must be a non-empty string of at most 1024 characters")
    return value


def _metadata(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, "bad_metadata", f"{where} must be a JSON object, got {type(value).__name__}")
    return value
