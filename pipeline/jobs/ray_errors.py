"""Ray wraps errors raised in tasks and actors (``RayTaskError``, ``ActorDiedError`` with causes): the jobs turn
them back into this project's one-line errors here, and only here."""

from __future__ import annotations

from cola_moderation.operators.errors import ColaError


def cola_cause(exc: BaseException) -> ColaError | None:
    """The first of this project's errors in ``exc``'s chain of causes (Ray wraps task errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ColaError) and not type(current).__module__.startswith("ray."):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return None


def raise_ours(exc: BaseException) -> None:
    """Re-raise the first of this project's errors in ``exc``'s causes (its one line, not Ray's wrapper); return
    when there is none, so the caller re-raises ``exc`` itself."""
    ours = cola_cause(exc)
    if ours is not None:
        raise ours from None
