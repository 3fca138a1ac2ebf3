"""The ledger's database: which URLs are accepted, and the engine made for one.

Two dialects, each with its asyncio driver: SQLite (aiosqlite) and PostgreSQL
(asyncpg). A URL without a driver gets that one, so `postgresql://…` works as
operators usually write it.
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
# A database that does not answer in this long counts as down (the default is 60 s).
CONNECT_TIMEOUT_S = 5.0
# A statement that hangs (a server stopped mid-query) is given up on after this long.
COMMAND_TIMEOUT_S = 15.0


def resolve_url(url: str) -> str:
    """The URL with its asyncio driver; ValueError for one the ledger cannot use."""
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    except ArgumentError:
        raise ValueError(f"Invalid database URL {url!r}") from None
    dialect = parsed.get_backend_name()
    if dialect not in DRIVERS:
        raise ValueError(
            f"Unsupported database {dialect!r}: use sqlite+aiosqlite:///FILE "
            "or postgresql+asyncpg://USER@HOST/DB"
        )
    wanted = DRIVERS[dialect]
    if parsed.drivername not in (dialect, wanted):
        raise ValueError(f"Database URL must use {wanted}:// (got {parsed.drivername})")
    return parsed.set(drivername=wanted).render_as_string(hide_password=False)


def open_engine(url: str) -> AsyncEngine:
    """An engine for a URL `resolve_url` accepts. Times are stored in UTC on both."""
    resolved = resolve_url(url)
    if resolved.startswith("postgresql"):
        return create_async_engine(
            resolved,
            pool_size=2,
            max_overflow=2,
            # A pooled connection from before a database restart is replaced, not used.
            pool_pre_ping=True,
            connect_args={
                "timeout": CONNECT_TIMEOUT_S,
                "command_timeout": COMMAND_TIMEOUT_S,
                "server_settings": {"timezone": "UTC"},
            },
        )
    return create_async_engine(
        resolved, pool_pre_ping=True, connect_args={"timeout": CONNECT_TIMEOUT_S}
    )
