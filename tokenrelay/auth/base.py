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
    """Who owns a stream. `id` scopes streams and idempotency keys."""

    id: str


ANONYMOUS = Principal("anonymous")


class Authenticator(Protocol):
    mode: str

    async def authenticate(self, credential: str | None) -> Principal:
        """The principal for `credential`, or AuthenticationFailed."""
        ...


class NoAuth:
    """Every request is the same anonymous principal (loopback only, or insecure)."""

    mode = "none"

    async def authenticate(self, credential: str | None) -> Principal:
        return ANONYMOUS


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
