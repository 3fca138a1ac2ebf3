"""Bringing a ledger database to the newest schema (Alembic `upgrade head`).

Alembic is configured here, in code: its scripts ship inside the package. It is
imported only when the database is behind `HEAD`: a gateway that starts on an
up-to-date database reads one row and loads no Alembic (nor Mako) at all.

A new SQLite database (no tables at all) is not migrated step by step: its tables are
created as they are at `HEAD` (schema.py) and it is stamped `HEAD`, as Alembic's own
"create_all, then stamp" recipe does. Alembic and Mako would otherwise stay loaded for
the life of a gateway on its first start, some 10 MiB. A test checks that the
migrations and schema.py make the same tables. PostgreSQL is always migrated: there
instances that start at once take turns under an advisory lock (migrations/env.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tokenrelay.observability.log import log_event
from tokenrelay.usage.schema import metadata

log = logging.getLogger("tokenrelay.usage")

SCRIPTS = Path(__file__).parent / "migrations"
# The newest revision in migrations/versions/ (a test checks it is Alembic's head).
HEAD = "0003"


def apply_migrations(connection: Connection) -> None:
    """Alembic's `upgrade head`, step by step, on `connection`."""
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


def _is_empty(connection: Connection) -> bool:
    return not inspect(connection).get_table_names()


def _create_at_head(connection: Connection) -> None:
    metadata.create_all(connection)
    # The table and constraint as Alembic makes them, so later migrations apply on top.
    connection.execute(
        text(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        )
    )
    connection.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": HEAD})


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
        revision = await current_revision(conn)
        if revision == HEAD:
            return False
        if revision is None and conn.dialect.name == "sqlite" and await conn.run_sync(_is_empty):
            await conn.run_sync(_create_at_head)
            log_event(log, "ledger_created", revision=HEAD)
        else:
            await conn.run_sync(apply_migrations)
        return True
