"""Bringing a ledger database to the newest schema (Alembic `upgrade head`).

Alembic is configured here, in code: its scripts ship inside the package. It is
imported only when the database is behind `HEAD`: a gateway that starts on an
up-to-date database reads one row and loads no Alembic (nor Mako) at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

SCRIPTS = Path(__file__).parent / "migrations"
# The newest revision in migrations/versions/ (a test checks it is Alembic's head).
HEAD = "0003"


def _upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    # One INFO line per Alembic plugin at every upgrade says nothing an operator needs.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _has_version_table(connection: Connection) -> bool:
    return inspect(connection).has_table("alembic_version")


async def current_revision(conn: AsyncConnection) -> str | None:
    """The revision the database is at; None for a database without the ledger."""
    if not await conn.run_sync(_has_version_table):
        return None
    result = await conn.execute(text("SELECT version_num FROM alembic_version"))
    revision: str | None = result.scalar_one_or_none()
    return revision


async def upgrade(engine: AsyncEngine) -> bool:
    """Apply what is missing; True when something was. Safe to run any number of times,
    and from several instances at once (PostgreSQL: under an advisory lock)."""
    async with engine.begin() as conn:
        if await current_revision(conn) == HEAD:
            return False
        await conn.run_sync(_upgrade)
        return True
