"""The authentication seam.

An `Authenticator` turns the request's credentials into a `Principal` or raises
`AuthenticationFailed` (401). Credentials are read from `x-api-key` (what SDK 1.x
sends) or `Authorization: Bearer` (SDK 2.x); when both arrive, `x-api-key` wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tokenrelay.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class Principal:
    """Who owns a stream. `id` scopes streams and idempotency keys; `admin` may see
    every user's usage (API keys with the admin role, a JWT's admin claim, the local
    user of a loopback gateway without auth)."""

    id: str
    admin: bool = False


# The role that may see every user's usage (an API key's 4th field, a JWT's role claim).
ADMIN_ROLE = "admin"

ANONYMOUS = Principal("anonymous")
# The one user of a gateway without auth that only its own machine can reach.
LOCAL_ADMIN = Principal("anonymous", admin=True)


class Authenticator(Protocol):
    mode: str

    async def authenticate(self, credential: str | None) -> Principal:
        """The principal for `credential`, or AuthenticationFailed."""
        ...


class NoAuth:
    """Every request is the same anonymous principal (loopback only, or insecure).
    On loopback that principal is the machine's own user, so an admin; behind
    `--insecure-no-auth` it is not, since whoever reaches the port is unknown."""

    mode = "none"

    def __init__(self, *, admin: bool = False) -> None:
        self._principal = LOCAL_ADMIN if admin else ANONYMOUS

    async def authenticate(self, credential: str | None) -> Principal:
        return self._principal


def credential_from(headers: Mapping[str, str]) -> str | None:
    """The presented credential: `x-api-key`, else the `Authorization: Bearer` token."""
    get = headers.get
    key = get("x-api-key")
    if key:
        return str(key).strip()
    authorization = get("authorization")
    if authorization:
        scheme, _, token = str(authorization).partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise AuthenticationFailed("Authorization must be 'Bearer <token>'")
    return None


def require(credential: str | None) -> str:
    if not credential:
        raise AuthenticationFailed(
            "Missing credentials: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
        )
    return credential
