"""The batches' SQL: SQLAlchemy Core over the ledger's engine (SQLite or PostgreSQL).

Every method is one transaction. What makes a batch's results land in the ledger
exactly once, however many instances and readers collect them at the same time, is
`record`: its conditional UPDATE sets `results_recorded` only where it is still false,
and only the transaction that did so writes the results and the `stream_usage` rows.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, bindparam, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tokenrelay.batches.errors import BatchesUnavailable
from tokenrelay.usage.ledger import insert_ignoring_duplicates
from tokenrelay.usage.schema import batch_requests, batches

RETRY_AFTER_S = 5.0
SUBMITTING = "submitting"
ENDED = "ended"
COUNTS = ("processing", "succeeded", "errored", "canceled", "expired")


@dataclass(frozen=True, slots=True)
class Counts:
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTS}


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    owner: str
    upstream_id: str | None
    deployment: str
    processing_status: str  # submitting | in_progress | canceling | ended
    requests: int
    counts: Counts
    created_at: datetime
    ended_at: datetime | None
    results_recorded: bool
    cost_usd: Decimal | None  # once the results are recorded


@dataclass(frozen=True, slots=True)
class Progress:
    """What the upstream says of a batch now."""

    processing_status: str
    counts: Counts
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class Request:
    position: int
    custom_id: str
    model: str


def new_batch_id() -> str:
    return "batch_" + secrets.token_urlsafe(18)


def now() -> datetime:
    return datetime.now(UTC)


def _utc(stamp: datetime) -> datetime:
    # SQLite keeps no zone: what it gives back is the UTC that was written.
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _batch(row: Row[Any]) -> Batch:
    m = row._mapping
    cost = m["cost_usd"]
    return Batch(
        m["id"], m["owner"], m["upstream_id"], m["deployment"], m["processing_status"],
        m["requests"], Counts(*(m[name] for name in COUNTS)), _utc(m["created_at"]),
        _utc(m["ended_at"]) if m["ended_at"] is not None else None, m["results_recorded"],
        Decimal(cost).quantize(Decimal("1e-8")) if cost is not None else None,
    )  # fmt: skip


class BatchStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._usage_insert = insert_ignoring_duplicates(engine.dialect.name)

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.begin() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            raise BatchesUnavailable(
                "The batches database cannot be reached; try again shortly",
                retry_after=RETRY_AFTER_S,
            ) from exc

    async def create(self, owner: str, deployment: str, requests: Sequence[Request]) -> Batch:
        """A batch being submitted: its row and its requests', before the upstream has it
        (a batch the upstream has is never one the gateway does not know)."""
        at = now()
        batch = Batch(new_batch_id(), owner, None, deployment, SUBMITTING, len(requests),
                      Counts(processing=len(requests)), at, None, False, None)  # fmt: skip
        async with self._begin() as conn:
            await conn.execute(
                insert(batches),
                {"id": batch.id, "owner": owner, "upstream_id": None, "deployment": deployment,
                 "processing_status": SUBMITTING, "requests": batch.requests,
                 **batch.counts.as_dict(), "created_at": at, "ended_at": None,
                 "refreshed_at": at, "results_recorded": False, "cost_usd": None},
            )  # fmt: skip
            await conn.execute(
                insert(batch_requests),
                [{"batch_id": batch.id, "position": r.position, "custom_id": r.custom_id,
                  "model": r.model, "result": None} for r in requests],
            )  # fmt: skip
        return batch

    async def submitted(self, batch_id: str, upstream_id: str, progress: Progress) -> None:
        b = batches.c
        async with self._begin() as conn:
            await conn.execute(
                update(batches)
                .where(b.id == batch_id)
                .values(upstream_id=upstream_id, **_progress(progress))
            )

    async def discard(self, batch_id: str) -> None:
        """A batch the upstream refused: forgotten."""
        async with self._begin() as conn:
            # The requests first (SQLite enforces no foreign keys).
            await conn.execute(delete(batch_requests).where(batch_requests.c.batch_id == batch_id))
            await conn.execute(delete(batches).where(batches.c.id == batch_id))

    async def get(self, owner: str, batch_id: str) -> Batch | None:
        b = batches.c
        async with self._begin() as conn:
            row = (
                await conn.execute(select(batches).where(b.id == batch_id, b.owner == owner))
            ).first()
        return None if row is None else _batch(row)

    async def page(self, owner: str, limit: int) -> list[Batch]:
        """The owner's batches, newest first."""
        b = batches.c
        query = (
            select(batches)
            .where(b.owner == owner)
            .order_by(b.created_at.desc(), b.id.desc())
            .limit(limit)
        )
        async with self._begin() as conn:
            return [_batch(r) for r in (await conn.execute(query)).all()]

    async def unrecorded(self, limit: int) -> list[Batch]:
        """Submitted batches whose results are not in the ledger yet, least recently
        refreshed first: the refresher's work."""
        b = batches.c
        query = (
            select(batches)
            .where(b.results_recorded.is_(False), b.upstream_id.is_not(None))
            .order_by(b.refreshed_at)
            .limit(limit)
        )
        async with self._begin() as conn:
            return [_batch(r) for r in (await conn.execute(query)).all()]

    async def progressed(self, batch_id: str, progress: Progress) -> None:
        """The upstream's latest word on a batch whose results are not recorded yet."""
        b = batches.c
        async with self._begin() as conn:
            await conn.execute(
                update(batches)
                .where(b.id == batch_id, b.results_recorded.is_(False))
                .values(**_progress(progress))
            )

    async def requests(self, batch_id: str) -> list[Request]:
        r = batch_requests.c
        query = (
            select(r.position, r.custom_id, r.model)
            .where(r.batch_id == batch_id)
            .order_by(r.position)
        )
        async with self._begin() as conn:
            return [Request(*row) for row in (await conn.execute(query)).all()]

    async def record(
        self,
        batch_id: str,
        progress: Progress,
        results: Sequence[tuple[int, str]],
        usage_rows: Sequence[dict[str, Any]],
        cost_usd: Decimal,
    ) -> bool:
        """Store an ended batch's results (position, JSON line) and write its ledger
        rows, once: False when another reader already did."""
        b, r = batches.c, batch_requests.c
        async with self._begin() as conn:
            done = await conn.execute(
                update(batches)
                .where(b.id == batch_id, b.results_recorded.is_(False))
                .values(results_recorded=True, cost_usd=cost_usd, **_progress(progress))
            )
            if not done.rowcount:
                return False
            await conn.execute(
                update(batch_requests)
                .where(r.batch_id == batch_id, r.position == bindparam("at"))
                .values(result=bindparam("line")),
                [{"at": position, "line": line} for position, line in results],
            )
            if usage_rows:
                await conn.execute(self._usage_insert, list(usage_rows))
        return True

    async def results(self, batch_id: str) -> list[str]:
        """The recorded results' JSON lines, in the input's order."""
        r = batch_requests.c
        query = select(r.result).where(r.batch_id == batch_id).order_by(r.position)
        async with self._begin() as conn:
            return [row[0] for row in (await conn.execute(query)).all() if row[0] is not None]


def _progress(progress: Progress) -> dict[str, Any]:
    return {"processing_status": progress.processing_status, **progress.counts.as_dict(),
            "ended_at": progress.ended_at, "refreshed_at": now()}  # fmt: skip
