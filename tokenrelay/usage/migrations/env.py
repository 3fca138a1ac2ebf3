"""Alembic's environment for the ledger: it runs on a connection handed in by
`tokenrelay.usage.migrate` (Alembic's "connection sharing" recipe), so the same code
works inside a running event loop (gateway start) and from the CLI."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from tokenrelay.usage.schema import metadata

# Any fixed number: instances that start at once take turns to migrate.
_MIGRATION_LOCK = 7_201_505


def run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held until the migration's transaction ends; DDL is transactional there.
            connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if context.is_offline_mode() or _connection is None:
    raise RuntimeError("run the ledger's migrations with 'tokenrelay db upgrade'")
run(_connection)
