"""Request parsing for POST /v1/moderate without a server: Starlette requests built from an ASGI scope."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence

import pytest
from starlette.requests import Request

from cola_moderation.connectors.records import HttpPosition
from cola_moderation.pipeline.jobs.http_inputs import RequestError, Upload, decode_base64, parse_upload, request_id

PAYLOAD = bytes(range(256)) * 3  # every byte value: '+', '/', '-', '_' all appear in its base64


def request(body_chunks: Sequence[bytes], headers: dict[str, str], query: bytes = b"") -> Request:
    chunks = list(body_chunks)

    async def receive() -> dict[str, object]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/v1/moderate", "query_string": query,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    return Request(scope, receive)


def parse(body_chunks: Sequence[bytes], headers: dict[str, str], *, max_bytes: int = 10_000,
          query: bytes = b"") -> Upload:
    return asyncio.run(parse_upload(request(body_chunks, headers, query), max_bytes=max_bytes))


@pytest.mark.parametrize("text", [
    base64.b64encode(PAYLOAD).decode(),
    base64.urlsafe_b64encode(PAYLOAD).decode().rstrip("="),  # URL-safe, padding dropped
    "\n".join(base64.encodebytes(PAYLOAD).decode().split()),  # MIME line breaks
    "data:image/png;base64," + base64.b64encode(PAYLOAD).decode(),
])
def test_base64_variants_decode_to_the_same_bytes(text: str) -> None:
    upload = parse([json.dumps({"image_b64": text}).encode()], {"content-type": "application/json"})
    assert upload.payload == PAYLOAD


def test_invalid_base64_is_a_400_naming_the_field() -> None:
    with pytest.raises(RequestError, match="'image_b64' is not valid base64") as info:
        decode_base64("abc$")
    assert info.value.status == 400 and info.value.body()["error"]["code"] == "bad_base64"


def test_raw_body_in_chunks_with_query_id() -> None:
    upload = parse([b"ab", b"cd", b"ef"], {"content-type": "image/webp"}, query=b"id=photo-1")
    assert upload == Upload(b"abcdef", "photo-1", {})
    assert parse([b"xy"], {}).payload == b"xy"  # no Content-Type: raw bytes


def test_size_limit_applies_to_declared_and_streamed_bodies() -> None:
    with pytest.raises(RequestError, match="request body of 20 bytes exceeds the limit of 10") as declared:
        parse([b"x" * 20], {"content-type": "image/png", "content-length": "20"}, max_bytes=10)
    with pytest.raises(RequestError, match="more than 10 bytes") as streamed:
        parse([b"x" * 6, b"x" * 6], {"content-type": "image/png"}, max_bytes=10)
    assert declared.value.status == streamed.value.status == 413
    with pytest.raises(RequestError, match="Content-Length must be a byte count") as bad:
        parse([b"x"], {"content-type": "image/png", "content-length": "ten"})
    assert bad.value.status == 400


def test_unsupported_content_type_is_415_before_reading() -> None:
    with pytest.raises(RequestError, match="unsupported Content-Type 'application/x-www-form-urlencoded'") as info:
        parse([b"a=b"], {"content-type": "application/x-www-form-urlencoded"})
    assert info.value.status == 415


def test_request_id_and_record() -> None:
    assert request_id({"x-request-id": "abc-123.z:9"}) == "abc-123.z:9"
    generated = request_id({"x-request-id": "has spaces and ; semicolons"})
    assert len(generated) == 32 and generated != request_id({})
    record = Upload(b"img").to_record("r1")
    assert record.id == "http:r1" and record.source == HttpPosition("r1")
    assert record.source.as_dict() == {"request": "r1"}
    assert Upload(b"img", "mine", {"a": 1}).to_record("r2").id == "mine"
