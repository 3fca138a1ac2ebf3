"""Fixtures: the shared stack, a stack of a test's own, and a client of the shared one.
Everything else the tests share is in tests/support."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Redis, Stack, redis_server, run_stack
from tests.support.services import Postgres, postgres_server


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One shared stack for tests that do not count upstream calls."""
    with run_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack of the test's own, for tests that count what reached the simulator."""
    with run_stack(tmp_path) as s:
        yield s


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """A redis-server of the module's own."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL for the session; each test makes its own database."""
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ledger database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    server: Postgres = request.getfixturevalue("postgres")
    return server.create_database(f"ledger_{os.urandom(6).hex()}")
