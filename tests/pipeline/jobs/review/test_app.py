"""The console's HTTP API against a real uvicorn server: auth on every route, CSRF, escaping, traversal,
idempotency and revisions, and the decision records on disk."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import jsonschema
import pyarrow.dataset as pads
import pytest

from cola_moderation.pipeline.jobs.review.app import CONTENT_SECURITY_POLICY, ReviewConsole, build_app
from cola_moderation.pipeline.jobs.review.auth import Authenticator
from cola_moderation.pipeline.jobs.review.decision_log import DecisionLog, ParquetDecisions
from cola_moderation.pipeline.jobs.review.items import ParquetItems
from cola_moderation.pipeline.runtime.decisions import decision_json_schema
from tests.pipeline.jobs.review.data import HOSTILE_CAPTION, ReviewData, ServerThread

TOKEN = "t0ken-for-the-review-tests-0123"
OTHER = "another-reviewers-token-4567"


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, *, token: str | None = TOKEN, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        payload = None
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        connection.putrequest(method, path, skip_accept_encoding=True)  # the path goes out exactly as written
        for name, value in sent.items():
            connection.putheader(name, value)
        if payload is not None:
            connection.putheader("Content-Length", str(len(payload)))
        connection.endheaders(payload)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, **kwargs)
        return status, json.loads(data) if data else None

    def csrf(self, token: str = TOKEN) -> str:
        status, session = self.json("GET", "/api/session", token=token)
        assert status == 200
        return str(session["csrf"])

    def decide(self, item_id: str, body: dict[str, Any], *, token: str = TOKEN) -> tuple[int, Any]:
        return self.json("POST", f"/api/items/{quote(item_id, safe='')}/decision", body=body, token=token,
                         headers={"X-CSRF-Token": self.csrf(token)})


@pytest.fixture
def console(review_data: ReviewData, tmp_path: Path) -> Iterator[tuple[Client, Path]]:
    decisions_dir = tmp_path / "decisions"
    log = DecisionLog([ParquetDecisions(decisions_dir)])
    log.load()
    app = build_app(ReviewConsole(
        items=ParquetItems(review_data.output_dir, parquet=review_data.config.parquet,
                           decode=review_data.config.decode),
        decisions=log, labels=review_data.config.taxonomy.label_names,
        auth=Authenticator({TOKEN: "alice", OTHER: "bob"})))
    with ServerThread(app) as server:
        yield Client(server.port), decisions_dir


def item_path(item_id: str, suffix: str = "") -> str:
    return f"/api/items/{quote(item_id, safe='')}" + (f"/{suffix}" if suffix else "")


def test_every_route_needs_the_token(console: tuple[Client, Path], review_data: ReviewData) -> None:
    client, _ = console
    first = review_data.quarantined[0]
    routes = [("GET", "/"), ("GET", "/static/review.js"), ("GET", "/static/review.css"), ("GET", "/api/session"),
              ("GET", "/api/items"), ("GET", "/api/items?status=done"), ("GET", item_path(first)),
              ("GET", item_path(first, "image")), ("POST", item_path(first, "decision")), ("GET", "/nowhere"),
              ("GET", "/api/items/../../etc/passwd/image"), ("DELETE", "/api/items"), ("GET", "/login"),
              ("GET", "/login?token=wrong-token-wrong-token"), ("POST", "/login"), ("PUT", "/api/session")]
    for method, path in routes:
        for token in (None, "wrong-token-wrong-token"):
            status, headers, body = client.request(method, path, token=token, body={"decision": "confirm"}
                                                   if method == "POST" else None)
            assert status == 401, (method, path, token, status)
            assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert b"upload-" not in body
    # A cookie that is not a live session is no better.
    status, _, _ = client.request("GET", "/api/items", token=None, headers={"Cookie": "cola_review_session=forged"})
    assert status == 401


def test_login_sets_an_httponly_strict_cookie(console: tuple[Client, Path]) -> None:
    client, _ = console
    status, headers, _ = client.request("GET", f"/login?token={TOKEN}", token=None)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    session = cookie.split(";")[0]
    status, headers, page = client.request("GET", "/", token=None, headers={"Cookie": session})
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["x-content-type-options"] == "nosniff" and "script-src 'self'" in headers["content-security-policy"]
    assert b"<script src=\"/static/review.js\"" in page and b"onclick" not in page  # no inline handlers
    status, me = client.json("GET", "/api/session", token=None, headers={"Cookie": session})
    assert status == 200 and me["reviewer"] == "alice"


def test_items_list_every_quarantined_record(console: tuple[Client, Path], review_data: ReviewData) -> None:
    client, _ = console
    quarantine = pads.dataset(review_data.output_dir / "route=quarantine").to_table().column("id").to_pylist()
    status, listing = client.json("GET", "/api/items?status=pending")
    assert status == 200
    assert [item["id"] for item in listing["items"]] == quarantine == review_data.quarantined
    assert listing["counts"] == {"pending": len(quarantine), "done": 0, "total": len(quarantine)}
    assert not set(review_data.allowed) & {item["id"] for item in listing["items"]}
    assert client.json("GET", "/api/items?status=bogus")[0] == 400


def test_hostile_ids_and_metadata_come_back_as_data(console: tuple[Client, Path], review_data: ReviewData) -> None:
    client, _ = console
    hostile = review_data.quarantined[1]
    assert "<script>" in hostile
    status, headers, body = client.request("GET", item_path(hostile))
    assert status == 200 and headers["content-type"] == "application/json"
    item = json.loads(body)
    assert item["id"] == hostile and item["metadata"]["caption"] == HOSTILE_CAPTION
    assert item["review_reasons"] == ["audit_sample"] and item["status"] == "pending"
    status, headers, image = client.request("GET", item_path(hostile, "image"))
    assert status == 200 and headers["content-type"] == "image/png" and image.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("path", [
    "/api/items/../../etc/passwd/image", "/api/items/..%2F..%2Fetc%2Fpasswd/image", "/api/items/%2Fetc%2Fpasswd/image",
    "/api/items/file:%2F%2F%2Fetc%2Fpasswd/image", "/api/items/upload-0/../../../etc/passwd",
    "/api/items/upload-0/image/../../etc/passwd", "/api/items//etc/passwd", "/api/items/%00/image",
    "/api/items/upload-0/secret", "/static/../../../../etc/passwd", "/static/index.html",
    "/static/..%2f..%2fetc%2fpasswd",
])
def test_traversal_is_404(console: tuple[Client, Path], path: str) -> None:
    client, _ = console
    status, _, body = client.request("GET", path)
    assert status == 404, path
    assert b"root:" not in body


def test_decisions_need_csrf_json_and_same_origin(console: tuple[Client, Path], review_data: ReviewData) -> None:
    client, decisions_dir = console
    path = item_path(review_data.quarantined[0], "decision")
    body = {"decision": "confirm"}
    assert client.json("POST", path, body=body)[0] == 403  # no CSRF token
    assert client.json("POST", path, body=body, headers={"X-CSRF-Token": "forged"})[0] == 403
    assert client.json("POST", path, body=body, headers={"X-CSRF-Token": client.csrf(OTHER)})[0] == 403  # bob's
    csrf = client.csrf()
    assert client.json("POST", path, body=body, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})[0] \
        == 403
    assert client.json("POST", path, body=b"decision=confirm", headers={
        "X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded"})[0] == 403
    assert not list((decisions_dir / "route=decisions").glob("*.parquet"))
    assert client.json("POST", path, body={"decision": "allow", "note": "x" * 20_000},
                       headers={"X-CSRF-Token": csrf})[0] == 413
    assert client.json("POST", path, body={"decision": "delete"}, headers={"X-CSRF-Token": csrf})[0] == 400
    assert client.json("POST", path, body={"decision": "relabel"}, headers={"X-CSRF-Token": csrf})[0] == 400
    assert client.json("POST", path, body={"decision": "relabel", "label": "<b>x</b>"},
                       headers={"X-CSRF-Token": csrf})[0] == 400
    assert not list((decisions_dir / "route=decisions").glob("*.parquet"))


def test_idempotent_decisions_and_revisions(console: tuple[Client, Path], review_data: ReviewData) -> None:
    client, decisions_dir = console
    first, hostile = review_data.quarantined[0], review_data.quarantined[1]
    status, answer = client.decide(first, {"decision": "confirm"})
    assert status == 201 and answer["created"]
    original = answer["decision"]
    assert (original["revision"], original["supersedes"], original["reviewer"]) == (1, None, "alice")
    status, again = client.decide(first, {"decision": "confirm"})
    assert status == 200 and not again["created"] and again["decision"] == original
    status, changed = client.decide(first, {"decision": "relabel", "label": "dog", "note": "<i>a dog</i>"})
    assert status == 201 and changed["decision"]["revision"] == 2
    assert changed["decision"]["supersedes"] == original["decision_id"] and changed["decision"]["final_label"] == "dog"
    status, bobs = client.decide(first, {"decision": "confirm"}, token=OTHER)  # another reviewer: own revision 1
    assert status == 201 and (bobs["decision"]["reviewer"], bobs["decision"]["revision"]) == ("bob", 1)
    status, marked = client.decide(hostile, {"decision": "adversarial"})
    assert status == 201 and marked["decision"]["final_label"] is None
    status, item = client.json("GET", item_path(first))
    assert item["status"] == "done" and [d["revision"] for d in item["decisions"]] == [1, 2, 1]
    status, listing = client.json("GET", "/api/items?status=done")
    assert {i["id"] for i in listing["items"]} == {first, hostile}
    assert listing["counts"]["done"] == 2 and listing["counts"]["pending"] == len(review_data.quarantined) - 2

    # The audit trail on disk: 4 records (the repeat wrote nothing), schema-valid, readable by pyarrow and duckdb.
    table = pads.dataset(decisions_dir, partitioning="hive").to_table()
    rows = sorted(table.to_pylist(), key=lambda r: r["decided_at"])
    assert [(r["id"], r["reviewer"], r["decision"], r["revision"]) for r in rows] == [
        (first, "alice", "confirm", 1), (first, "alice", "relabel", 2), (first, "bob", "confirm", 1),
        (hostile, "alice", "adversarial", 1)]
    assert {r["route"] for r in rows} == {"decisions"}
    assert rows[1]["note"] == "<i>a dog</i>" and rows[0]["automated_detection"] == "none"  # audit sample only
    assert rows[0]["automated_decision"] == "partial" and rows[1]["automated_decision"] == "none"
    assert rows[0]["original_label"] == rows[0]["final_label"] and rows[0]["source"]["row"] == 0
    validator = jsonschema.Draft202012Validator(decision_json_schema(), format_checker=jsonschema.FormatChecker())
    for document in (original, changed["decision"], bobs["decision"], marked["decision"]):
        validator.validate(document)
    counts = duckdb.sql(f"select decision, count(*) from read_parquet('{decisions_dir}/**/*.parquet', "
                        "hive_partitioning=true) group by decision order by decision").fetchall()
    assert counts == [("adversarial", 1), ("confirm", 2), ("relabel", 1)]


def test_a_restarted_console_keeps_the_decisions(review_data: ReviewData, tmp_path: Path) -> None:
    decisions_dir = tmp_path / "decisions"
    items = ParquetItems(review_data.output_dir, parquet=review_data.config.parquet, decode=review_data.config.decode)
    first = DecisionLog([ParquetDecisions(decisions_dir)])
    record = items.items()[0].record
    made = first.decide(record, reviewer="alice", decision="allow", final_label=None, note="")
    again = DecisionLog([ParquetDecisions(decisions_dir)])
    assert again.load() == 1
    repeat = again.decide(record, reviewer="alice", decision="allow", final_label=None, note="")
    assert not repeat.created and repeat.record == made.record
