from __future__ import annotations

from pathlib import Path

import pytest

from cola_moderation.operators.errors import ConfigError
from cola_moderation.pipeline.jobs.review.auth import Authenticator, read_token_file


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# comment\nalice:aaaaaaaaaaaaaaaa1\n\nbbbbbbbbbbbbbbbb2\n")
    assert read_token_file(path, reviewer="default") == {"aaaaaaaaaaaaaaaa1": "alice", "bbbbbbbbbbbbbbbb2": "default"}
    path.write_text("carol:short\n")
    with pytest.raises(ConfigError, match="line 1: a token needs at least 16"):
        read_token_file(path, reviewer="x")
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no tokens"):
        read_token_file(path, reviewer="x")
    with pytest.raises(ConfigError, match="No such file"):
        read_token_file(tmp_path / "missing", reviewer="x")


def test_sessions_and_csrf() -> None:
    auth = Authenticator({"aaaaaaaaaaaaaaaa1": "alice"})
    assert auth.login("wrong") is None and auth.login(None) is None and auth.from_bearer("") is None
    session_id = auth.login("aaaaaaaaaaaaaaaa1")
    assert session_id is not None
    session = auth.from_cookie(session_id)
    assert session is not None and session.reviewer == "alice"
    assert auth.from_cookie("forged") is None
    assert auth.csrf_ok(session, session.csrf) and not auth.csrf_ok(session, None)
    assert not auth.csrf_ok(session, session.csrf[:-1])
    bearer = auth.from_bearer("aaaaaaaaaaaaaaaa1")
    assert bearer is not None and bearer == auth.from_bearer("aaaaaaaaaaaaaaaa1") and bearer.csrf != session.csrf
