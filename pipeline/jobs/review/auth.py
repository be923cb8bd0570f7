"""Who may use the console: bearer tokens, browser sessions and CSRF tokens.

* Every route needs a reviewer's token: ``Authorization: Bearer <token>`` (scripts), or the session cookie the
  browser gets from ``GET /login?token=<token>`` (HttpOnly, SameSite=Strict; the page never sees the token).
* State-changing requests (POST) also need the session's CSRF token in ``X-CSRF-Token`` (``GET /api/session``
  returns it), a JSON body, and, when the browser sends one, an ``Origin`` equal to the console's own.
* Tokens: a ``--token-file`` of lines ``reviewer:token`` (or a bare ``token``, reviewer from ``--reviewer``), at least
  16 characters each; without a file one token is generated and printed once at start.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from cola_moderation.operators.errors import ConfigError

MIN_TOKEN_CHARS = 16
SESSION_COOKIE = "cola_review_session"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, slots=True)
class Session:
    reviewer: str
    csrf: str


def read_token_file(path: Path, *, reviewer: str) -> dict[str, str]:
    """``{token: reviewer}`` from ``path`` (see the module docstring)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: {exc.strerror or exc}") from None
    tokens: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, _, token = text.rpartition(":") if ":" in text else (reviewer, "", text)
        name, token = name.strip() or reviewer, token.strip()
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"--token-file {path} line {number}: a token needs at least {MIN_TOKEN_CHARS} "
                              "characters")
        tokens[token] = name
    if not tokens:
        raise ConfigError(f"--token-file {path}: no tokens")
    return tokens


def generate_token() -> str:
    return secrets.token_urlsafe(24)


class Authenticator:
    """Checks tokens and sessions in constant time; holds the sessions (in memory: a restart logs browsers out)."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = {_digest(token): reviewer for token, reviewer in tokens.items()}
        self._sessions: dict[str, Session] = {}
        self._bearer_sessions: dict[bytes, Session] = {}
        self._lock = threading.Lock()

    def reviewer_for_token(self, token: str | None) -> str | None:
        if not token:
            return None
        digest = _digest(token)
        for known, reviewer in self._tokens.items():
            if hmac.compare_digest(known, digest):
                return reviewer
        return None

    def login(self, token: str | None) -> str | None:
        """A new browser session id for a valid ``token``."""
        reviewer = self.reviewer_for_token(token)
        if reviewer is None:
            return None
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session_id] = Session(reviewer, secrets.token_urlsafe(32))
        return session_id

    def from_bearer(self, token: str | None) -> Session | None:
        """The session of a bearer token (one per token, with its own CSRF token)."""
        reviewer = self.reviewer_for_token(token)
        if reviewer is None or token is None:
            return None
        with self._lock:
            return self._bearer_sessions.setdefault(_digest(token), Session(reviewer, secrets.token_urlsafe(32)))

    def from_cookie(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            return self._sessions.get(session_id)

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(session.csrf.encode(), (presented or "").encode())


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
