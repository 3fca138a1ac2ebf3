"""The ledger's schema and tools on real databases (SQLite and PostgreSQL): migrations
by `tokenrelay db upgrade`, `tokenrelay usage` over known rows, writes that never
duplicate, a capped backlog; and who is an admin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import ROOT
from tokenrelay.auth.api_keys import ApiKeyAuth, new_key, parse_lines
from tokenrelay.auth.factory import build_authenticator
from tokenrelay.auth.jwt_auth import JwtAuth, JwtSettings
from tokenrelay.config import Settings
from tokenrelay.usage import migrate
from tokenrelay.usage.ledger import SqlLedger
from tokenrelay.usage.record import StreamRecord
from tokenrelay.usage.schema import metadata


def tokenrelay(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenrelay", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()


def record(sid: str, user: str, model: str, started: str, tokens: tuple[int, int],
           cost: float) -> StreamRecord:  # fmt: skip
    return StreamRecord(
        stream_id=sid, request_id=f"req_{sid}", principal=user, model=model,
        served_model=model, status="done", stop_reason="end_turn",
        input_tokens=tokens[0], output_tokens=tokens[1], cache_creation_input_tokens=0,
        cache_read_input_tokens=0, cost_usd=cost, estimated=False, cached=False,
        coalesced=0, retries=0, continuations=0, ttft_ms=1.5, duration_ms=20.0,
        started_at=at(started), finished_at=at(started) + 0.02,
    )  # fmt: skip


KNOWN = [
    record("s1", "alice", "claude-haiku-4-5", "2026-11-30T10:00:00", (10, 20), 0.0001),
    record("s2", "alice", "claude-haiku-4-5", "2026-11-30T23:59:59", (5, 7), 0.00004),
    record("s3", "alice", "claude-sonnet-4-5", "2026-11-30T12:00:00", (100, 50), 0.00105),
    record("s4", "bob", "claude-haiku-4-5", "2026-12-01T23:59:59", (3, 4), 0.0000235),
    record("s5", "alice", "claude-haiku-4-5", "2026-12-01T00:00:00", (1, 2), 0.00000001),
]


async def write(url: str, records: list[StreamRecord], **options: Any) -> SqlLedger:
    ledger = SqlLedger(url, **options)
    await ledger.open()
    for r in records:
        ledger.record(r)
    await ledger.aclose()
    return ledger


async def count_rows(url: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM stream_usage"))).scalar_one())
    finally:
        await engine.dispose()


def group(user: str, day: str, model: str, *sums: float) -> dict[str, Any]:
    streams, input_tokens, output_tokens, cost = sums
    return {
        "user": user,
        "day": day,
        "model": model,
        "streams": streams,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": cost,
    }


async def test_usage_prints_groups_by_user_day_and_model(database_url: str) -> None:
    await write(database_url, KNOWN)
    env = {"TOKENRELAY_DATABASE_URL": database_url}

    def usage(*args: str) -> dict[str, Any]:
        done = tokenrelay("usage", "--json", *args, **env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    everything = usage()
    assert everything["groups"] == [
        group("alice", "2026-11-30", "claude-haiku-4-5", 2, 15, 27, 0.00014),
        group("alice", "2026-11-30", "claude-sonnet-4-5", 1, 100, 50, 0.00105),
        group("alice", "2026-12-01", "claude-haiku-4-5", 1, 1, 2, 0.00000001),
        group("bob", "2026-12-01", "claude-haiku-4-5", 1, 3, 4, 0.0000235),
    ]
    assert everything["totals"] == {
        "streams": 5, "input_tokens": 119, "output_tokens": 83, "cost_usd": 0.00121351,
    }  # fmt: skip
    assert usage("--user", "bob")["groups"] == [everything["groups"][3]]
    assert usage("--model", "claude-sonnet-4-5")["totals"]["streams"] == 1
    # [from, to): midnight belongs to the day it starts.
    december = usage("--from", "2026-12-01", "--to", "2026-12-01T23:59:59")
    assert december["groups"] == [everything["groups"][2]]
    assert usage("--from", "2026-12-01T00:00:00+01:00")["totals"]["streams"] == 3

    table = tokenrelay("usage", "--database-url", database_url, COLUMNS="200")
    assert table.returncode == 0, table.stderr
    cells = [[c.strip() for c in line.split("│")[1:-1]]
             for line in table.stdout.splitlines() if line.startswith("│")]  # fmt: skip
    assert cells == [
        ["alice", "2026-11-30", "claude-haiku-4-5", "2", "15", "27", "0.00014000"],
        ["alice", "2026-11-30", "claude-sonnet-4-5", "1", "100", "50", "0.00105000"],
        ["alice", "2026-12-01", "claude-haiku-4-5", "1", "1", "2", "0.00000001"],
        ["bob", "2026-12-01", "claude-haiku-4-5", "1", "3", "4", "0.00002350"],
        ["total", "", "", "5", "119", "83", "0.00121351"],
    ]


def test_usage_refuses_bad_times_and_a_database_without_the_ledger(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/empty.db"
    bad = tokenrelay("usage", "--from", "soon", "--database-url", url)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert "'from' must be an ISO 8601 time" in bad.stderr
    empty = tokenrelay("usage", "--database-url", url)
    assert empty.returncode == 1
    assert "run 'tokenrelay db upgrade'" in empty.stderr


def _schema_differences(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


async def test_db_upgrade_creates_the_schema_once(database_url: str) -> None:
    first = tokenrelay("db", "upgrade", "--database-url", database_url)
    assert (first.returncode, first.stdout) == (0, "upgraded to 0003\n"), first.stderr
    again = tokenrelay("db", "upgrade", "--database-url", database_url)
    assert (again.returncode, again.stdout) == (0, "already at 0003\n"), again.stderr
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            assert [tuple(v) for v in versions] == [("0003",)]
            # The migrations make exactly the tables the code reads and writes.
            assert await conn.run_sync(_schema_differences) == []
    finally:
        await engine.dispose()


def _shape(connection: Connection) -> dict[str, Any]:
    """Every table's columns, keys and indexes, as the database reports them."""
    found = inspect(connection)

    def table(name: str) -> tuple[Any, ...]:
        columns = [(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                   for c in found.get_columns(name)]  # fmt: skip
        indexes = sorted((i["name"], tuple(i["column_names"]), i["unique"])
                         for i in found.get_indexes(name))  # fmt: skip
        keys = sorted((tuple(f["constrained_columns"]), f["referred_table"])
                      for f in found.get_foreign_keys(name))  # fmt: skip
        uniques = sorted(tuple(u["column_names"]) for u in found.get_unique_constraints(name))
        return columns, found.get_pk_constraint(name)["constrained_columns"], indexes, keys, uniques

    return {name: table(name) for name in sorted(found.get_table_names())}


async def test_a_new_sqlite_database_is_made_at_head_as_the_migrations_would(
    tmp_path: Path,
) -> None:
    made = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/made.db")
    migrated = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/migrated.db")
    try:
        assert await migrate.upgrade(made) is True
        async with migrated.begin() as conn:
            await conn.run_sync(migrate.apply_migrations)
        shapes = []
        for engine in (made, migrated):
            async with engine.connect() as conn:
                assert await migrate.current_revision(conn) == migrate.HEAD
                assert await conn.run_sync(_schema_differences) == []
                shapes.append(await conn.run_sync(_shape))
        assert shapes[0] == shapes[1]
        assert len(shapes[0]) == 6  # five tables and alembic_version
        # Alembic takes the stamped database as migrated: nothing to do, no error.
        async with made.begin() as conn:
            await conn.run_sync(migrate.apply_migrations)
        assert await migrate.upgrade(made) is False
    finally:
        await made.dispose()
        await migrated.dispose()


def test_making_a_new_sqlite_database_loads_no_alembic(tmp_path: Path) -> None:
    # Alembic and Mako, once imported, stay for the life of the gateway: some 10 MiB.
    probe = (
        "import asyncio, sys\n"
        "from sqlalchemy.ext.asyncio import create_async_engine\n"
        "from tokenrelay.usage import migrate\n"
        f"engine = create_async_engine('sqlite+aiosqlite:///{tmp_path}/probe.db')\n"
        "print(asyncio.run(migrate.upgrade(engine)), 'alembic' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout == "True False\n", done.stderr


def test_head_is_the_newest_migration() -> None:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrate.SCRIPTS))
    assert ScriptDirectory.from_config(config).get_heads() == [migrate.HEAD]


async def test_a_record_written_twice_is_one_row(database_url: str) -> None:
    # Two ledgers (as after a retried write whose commit did happen) write the same record.
    await write(database_url, KNOWN[:2])
    await write(database_url, KNOWN[1:3])
    assert await count_rows(database_url) == 3


async def test_a_full_backlog_drops_new_records_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/capped.db"
    ledger = SqlLedger(url, max_backlog=2, flush_interval=3600)
    await ledger.open()
    for r in KNOWN[:3]:
        ledger.record(r)
    caplog.set_level("INFO", logger="tokenrelay.usage")
    await ledger.aclose()
    assert (ledger.written, ledger.dropped) == (2, 1)
    assert await count_rows(url) == 2
    [dropped] = [r for r in caplog.records if getattr(r, "event", None) == "ledger_dropped"]
    assert dropped.fields == {"rows": 1, "reason": "backlog_full", "backlog": 2}  # type: ignore[attr-defined]


# --- who is an admin -----------------------------------------------------------------

SECRET = "a-test-secret-long-enough-for-hs256-signing"


@pytest.mark.parametrize(
    ("claims", "admin"),
    [
        ({"role": "admin"}, True),
        ({"role": ["reader", "admin"]}, True),
        ({"role": "reader"}, False),
        ({"role": ["reader"]}, False),
        ({}, False),
        ({"groups": "admin"}, False),
    ],
)
async def test_a_jwt_role_claim_makes_an_admin(claims: dict[str, Any], admin: bool) -> None:
    auth = JwtAuth(JwtSettings(secret=SECRET))
    token = jwt.encode({"sub": "carol", "exp": 2**33, **claims}, SECRET, algorithm="HS256")
    principal = await auth.authenticate(token)
    assert (principal.id, principal.admin) == ("carol", admin)


async def test_the_jwt_admin_claim_is_configurable() -> None:
    settings = Settings(auth="jwt", jwt_secret=SECRET, jwt_admin_claim="groups")
    auth = build_authenticator(settings)
    token = jwt.encode({"sub": "dan", "exp": 2**33, "groups": ["admin"]}, SECRET, "HS256")
    assert (await auth.authenticate(token)).admin is True


async def test_an_api_key_line_may_carry_the_admin_role() -> None:
    user_key, user_line = new_key("erin")
    admin_key, admin_line = new_key("root", admin=True)
    assert len(user_line.split()) == 3 and admin_line.split()[3] == "admin"
    auth = ApiKeyAuth(parse_lines(f"{user_line}\n{admin_line}\n"))
    assert (await auth.authenticate(user_key)).admin is False
    assert (await auth.authenticate(admin_key)).admin is True
    with pytest.raises(ValueError, match="keys line 1"):
        parse_lines(f"{admin_line} extra")


async def test_without_auth_only_a_loopback_gateway_makes_its_user_an_admin() -> None:
    local = build_authenticator(Settings(host="127.0.0.1"))
    exposed = build_authenticator(Settings(host="0.0.0.0", insecure_no_auth=True))
    assert (await local.authenticate(None)).admin is True
    assert (await exposed.authenticate(None)).admin is False
