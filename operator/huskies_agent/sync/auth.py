"""Bearer-token helpers shared by the client and the server."""

from __future__ import annotations

import hmac


def bearer_header(token: str) -> dict[str, str]:
    """The request headers that carry ``token`` (none when it is empty)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_problem(authorization: str | None, expected: str) -> str | None:
    """Why an ``Authorization`` header does not carry ``expected``; ``None`` when it does."""
    if not authorization:
        return "missing bearer token"
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return "authorization header is not a bearer token"
    if not hmac.compare_digest(value.strip().encode(), expected.encode()):
        return "wrong bearer token"
    return None
