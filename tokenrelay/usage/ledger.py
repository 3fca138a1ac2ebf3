"""`SqlLedger`: the usage sink that keeps one row per stream in SQLite or PostgreSQL.

`record()` appends to an in-memory backlog and returns: no I/O on the event loop's
path of a stream. One task writes the backlog in batches (one executemany, one
transaction) every `flush_interval` seconds, or at once when `batch_rows` are waiting.

A failed write keeps its rows and is retried with exponential backoff, so a database
outage loses nothing while the backlog is under `max_backlog` rows; past that, new
records are dropped and counted (`ledger_dropped`). A write whose commit may or may
not have happened (the connection broke during it) is retried as it was: the insert
is `ON CONFLICT (stream_id) DO NOTHING`, so a row is never written twice.

Log events: `ledger_backlog` (a write failed; rows pending, attempt, error),
`ledger_recovered` (writes work again), `ledger_dropped` (rows lost: over the cap, or
still pending when `aclose` ran out of time), `ledger_unavailable` (no migration at
start; the writer retries it before its first write).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
from collections import deque
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenrelay.errors import LedgerUnavailable
from tokenrelay.observability.log import log_event
from tokenrelay.usage import migrate, query
from tokenrelay.usage.database import open_engine
from tokenrelay.usage.record import StreamRecord
from tokenrelay.usage.report import UsageFilter, UsageGroup, UsageReport
from tokenrelay.usage.schema import stream_usage

log = logging.getLogger("tokenrelay.usage")

# What a database that cannot be reached raises: the driver's errors wrapped by
# SQLAlchemy, or a bare OSError / TimeoutError from connecting.
DATABASE_ERRORS = (SQLAlchemyError, OSError)
RETRY_AFTER_S = 5.0


_FIELDS = tuple(f.name for f in dataclasses.fields(StreamRecord))


def row_of(record: StreamRecord) -> dict[str, Any]:
    # A shallow copy: `dataclasses.asdict` deep-copies, at 4× the cost, for flat fields.
    row = {name: getattr(record, name) for name in _FIELDS}
    # repr() is the float's shortest exact spelling: 0.0035 stays 0.0035.
    row["cost_usd"] = Decimal(repr(record.cost_usd))
    row["started_at"] = datetime.fromtimestamp(record.started_at, UTC)
    row["finished_at"] = datetime.fromtimestamp(record.finished_at, UTC)
    return row


def insert_ignoring_duplicates(dialect: str) -> Insert:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(stream_usage).on_conflict_do_nothing(index_elements=["stream_id"])
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(stream_usage).on_conflict_do_nothing(index_elements=["stream_id"])


class SqlLedger:
    def __init__(
        self,
        url: str,
        *,
        batch_rows: int = 500,
        flush_interval: float = 0.5,
        max_backlog: int = 100_000,
        retry_base: float = 0.25,
        retry_max: float = 5.0,
        close_timeout: float = 5.0,
    ) -> None:
        self.engine: AsyncEngine = open_engine(url)  # no connection yet
        self._insert = insert_ignoring_duplicates(self.engine.dialect.name)
        self._batch_rows = batch_rows
        self._flush_interval = flush_interval
        self._max_backlog = max_backlog
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._close_timeout = close_timeout
        self._pending: deque[StreamRecord] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._migrated = False
        self._writer: asyncio.Task[None] | None = None
        self._unreported_drops = 0
        self.written = 0
        self.dropped = 0

    @property
    def backlog(self) -> int:
        return len(self._pending)

    # -- UsageSink ----------------------------------------------------------------

    def record(self, record: StreamRecord) -> None:
        if len(self._pending) >= self._max_backlog or self._writer_gone():
            self.dropped += 1
            self._unreported_drops += 1
            return
        self._pending.append(record)
        if len(self._pending) >= self._batch_rows:
            self._wake.set()

    async def open(self) -> None:
        """Migrate (upgrade head), then start the writer. A database that cannot be
        reached now does not stop the gateway: the writer migrates once it can."""
        try:
            await migrate.upgrade(self.engine)
            self._migrated = True
        except DATABASE_ERRORS as exc:
            log_event(log, "ledger_unavailable", level=logging.ERROR, error=_describe(exc))
        self._writer = asyncio.create_task(self._write_loop(), name="usage-ledger-writer")

    async def aclose(self) -> None:
        """Write what is pending, for at most `close_timeout` seconds, then stop."""
        self._closing = True
        self._wake.set()
        writer = self._writer
        if writer is not None:
            done, _ = await asyncio.wait([writer], timeout=self._close_timeout)
            if not done:
                writer.cancel()
                await asyncio.wait([writer])
        self._report_drops()
        if self._pending:
            log_event(
                log, "ledger_dropped", level=logging.ERROR,
                rows=len(self._pending), reason="shutdown",
            )  # fmt: skip
            self.dropped += len(self._pending)
            self._pending.clear()
        await self.engine.dispose()

    # -- queries ------------------------------------------------------------------

    async def report(self, usage: UsageFilter) -> UsageReport:
        try:
            async with self.engine.connect() as conn:
                return await query.report(conn, usage)
        except DATABASE_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def groups(self, usage: UsageFilter) -> list[UsageGroup]:
        try:
            async with self.engine.connect() as conn:
                return await query.groups(conn, usage)
        except DATABASE_ERRORS as exc:
            raise _unavailable(exc) from exc

    # -- the writer ---------------------------------------------------------------

    def _writer_gone(self) -> bool:
        return self._writer is not None and self._writer.done()

    async def _write_loop(self) -> None:
        failures = 0
        while self._pending or not self._closing:
            if failures == 0 and not self._closing:
                # A full batch wakes the writer; else the interval is up: write what is there.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._flush_interval)
                self._wake.clear()
            self._report_drops()
            if not self._pending:
                continue
            try:
                await self._write_batch()
            # Anything but cancellation: the writer must outlive every failure, or
            # rows would pile up unwritten with nobody saying so.
            except Exception as exc:
                failures += 1
                log_event(
                    log, "ledger_backlog", level=logging.WARNING,
                    rows=len(self._pending), attempt=failures, error=_describe(exc),
                )  # fmt: skip
                await asyncio.sleep(self._backoff(failures))
                continue
            if failures:
                log_event(log, "ledger_recovered", attempts=failures + 1, rows=self.backlog)
                failures = 0

    async def _write_batch(self) -> None:
        if not self._migrated:
            await migrate.upgrade(self.engine)
            self._migrated = True
        batch = list(itertools.islice(self._pending, self._batch_rows))
        async with self.engine.begin() as conn:
            await conn.execute(self._insert, [row_of(r) for r in batch])
        # Only now: a failed write leaves its rows first in line for the next attempt.
        # (record() only appends, so the first len(batch) rows are still this batch.)
        for _ in batch:
            self._pending.popleft()
        self.written += len(batch)

    def _backoff(self, failures: int) -> float:
        delay = min(self._retry_max, self._retry_base * 2.0 ** (failures - 1))
        # Jitter: instances that lost the same database do not come back in lockstep.
        return delay * random.uniform(0.75, 1.0)

    def _report_drops(self) -> None:
        if self._unreported_drops:
            log_event(
                log, "ledger_dropped", level=logging.ERROR,
                rows=self._unreported_drops, reason="backlog_full", backlog=len(self._pending),
            )  # fmt: skip
            self._unreported_drops = 0


def _describe(exc: BaseException) -> str:
    # The driver's own error (e.g. ConnectionRefusedError), not SQLAlchemy's wrapper.
    cause = getattr(exc, "orig", None) or exc
    return type(cause).__name__


def _unavailable(exc: BaseException) -> LedgerUnavailable:
    log_event(log, "ledger_query_failed", level=logging.WARNING, error=_describe(exc))
    return LedgerUnavailable(
        "The usage database cannot be reached; try again shortly", retry_after=RETRY_AFTER_S
    )
