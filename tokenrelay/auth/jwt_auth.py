"""JWT bearer tokens: HS256 with a shared secret, RS256/ES256 with a public key, or
keys from a JWKS URL (cached, refetched when a token names an unknown `kid`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import jwt

from tokenrelay.auth.base import ADMIN_ROLE, Principal, require
from tokenrelay.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class JwtSettings:
    secret: str | None = None  # HS256
    public_key: str | None = None  # PEM, RS256 or ES256
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    user_claim: str = "sub"
    # The claim that carries roles: the string "admin", or a list containing it.
    admin_claim: str = "role"
    leeway: float = 0.0
    # At most one refetch per this many seconds for unknown kids: a stream of tokens
    # with made-up kids must not turn into a stream of requests to the identity provider.
    jwks_refresh_cooldown: float = 30.0


class JwtAuth:
    mode = "jwt"

    def __init__(self, settings: JwtSettings) -> None:
        sources = [settings.secret, settings.public_key, settings.jwks_url]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "jwt auth needs exactly one of TOKENRELAY_JWT_SECRET (HS256), "
                "TOKENRELAY_JWT_PUBLIC_KEY_FILE (RS256/ES256) or TOKENRELAY_JWT_JWKS_URL"
            )
        self.settings = settings
        if settings.secret is not None:
            self._algorithms = ["HS256"]
        else:
            self._algorithms = ["RS256", "ES256"]
        # PyJWKClient caches the key set and refetches it for a kid it does not know.
        self._jwks = (
            jwt.PyJWKClient(
                settings.jwks_url,
                cache_keys=True,
                lifespan=300,
                timeout=5,
                cooldown_duration=settings.jwks_refresh_cooldown,
            )
            if settings.jwks_url
            else None
        )

    async def _key(self, token: str) -> object:
        if self._jwks is not None:
            # The fetch is blocking I/O: keep it off the event loop.
            signing_key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            return signing_key.key
        return (
            self.settings.secret if self.settings.secret is not None else self.settings.public_key
        )

    async def authenticate(self, credential: str | None) -> Principal:
        token = require(credential)
        s = self.settings
        try:
            claims = jwt.decode(
                token,
                key=await self._key(token),  # type: ignore[arg-type]
                algorithms=self._algorithms,
                issuer=s.issuer,
                audience=s.audience,
                leeway=s.leeway,
                options={"require": ["exp"], "verify_aud": s.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed("Token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationFailed("Token is not valid yet") from None
        except (jwt.PyJWTError, ValueError) as exc:
            raise AuthenticationFailed(f"Invalid token: {type(exc).__name__}") from None
        user = claims.get(s.user_claim)
        if not isinstance(user, str) or not user:
            raise AuthenticationFailed(f"Token has no '{s.user_claim}' claim")
        return Principal(user, admin=has_admin_role(claims.get(s.admin_claim)))


def has_admin_role(value: object) -> bool:
    """A role claim names the admin role: `"admin"`, or a list that contains it."""
    if isinstance(value, str):
        return value == ADMIN_ROLE
    return isinstance(value, list) and ADMIN_ROLE in value
