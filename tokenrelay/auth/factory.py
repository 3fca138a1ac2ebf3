"""Building the authenticator the settings ask for, and refusing unsafe exposure."""

from __future__ import annotations

import ipaddress

from tokenrelay.auth.api_keys import DEFAULT_KEYS_FILE, ApiKeyAuth
from tokenrelay.auth.base import Authenticator, NoAuth
from tokenrelay.config import Settings


class UnsafeConfiguration(Exception):
    """The settings would expose the gateway (and the upstream key) unsafely."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> str | None:
    """Raise for a configuration that must not start; return a warning to print loudly."""
    if "*" in settings.cors_origins and settings.cors_allow_credentials:
        raise UnsafeConfiguration(
            "CORS origin '*' cannot be combined with credentials: list the exact origins"
        )
    if (settings.ssl_certfile is None) != (settings.ssl_keyfile is None):
        raise UnsafeConfiguration("TLS needs both --ssl-certfile and --ssl-keyfile")
    if settings.auth != "none" or is_loopback(settings.host):
        return None
    if not settings.insecure_no_auth:
        raise UnsafeConfiguration(
            f"Refusing to listen on {settings.host} without authentication: anyone who can "
            "reach it could spend your Claude key. Use --auth api_key or --auth jwt, bind "
            "127.0.0.1, or pass --insecure-no-auth if something in front authenticates."
        )
    return (
        f"WARNING: no authentication on {settings.host}: every client can use this gateway "
        "and its upstream key (--insecure-no-auth)."
    )


def build_authenticator(settings: Settings) -> Authenticator:
    if settings.auth == "api_key":
        inline = settings.api_keys.get_secret_value() if settings.api_keys else None
        path = settings.api_keys_file
        if path is None and not inline:
            # The file `tokenrelay keys create` writes when it is not told where.
            path = DEFAULT_KEYS_FILE
        return ApiKeyAuth.from_sources(path, inline)
    if settings.auth == "jwt":
        # PyJWT brings cryptography (~10 MiB): only for the gateways that use it.
        from tokenrelay.auth.jwt_auth import JwtAuth, JwtSettings

        public_key = (
            settings.jwt_public_key_file.read_text() if settings.jwt_public_key_file else None
        )
        return JwtAuth(
            JwtSettings(
                secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
                public_key=public_key,
                jwks_url=settings.jwt_jwks_url,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                user_claim=settings.jwt_user_claim,
                jwks_refresh_cooldown=settings.jwt_jwks_refresh_cooldown,
                admin_claim=settings.jwt_admin_claim,
            )
        )
    return NoAuth(admin=is_loopback(settings.host))
