"""Queries over `stream_usage`: matching rows, their totals, and the per user, day and
model groups the CLI prints. Times are UTC throughout; days are UTC days."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection

from tokenrelay.usage.report import UsageFilter, UsageGroup, UsageReport, UsageTotals
from tokenrelay.usage.schema import COST, stream_usage

t = stream_usage.c
# Every column a row shows, in the table's order (the surrogate id is not one).
ROW_COLUMNS = [c for c in stream_usage.c if c.name != "id"]


def conditions(query: UsageFilter) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if query.since is not None:
        where.append(t.started_at >= _utc(query.since))
    if query.until is not None:
        where.append(t.started_at < _utc(query.until))
    if query.model is not None:
        where.append(t.model == query.model)
    if query.user is not None:
        where.append(t.principal == query.user)
    return where


def _utc(moment: datetime) -> datetime:
    # SQLite keeps the wall time only: every time is bound as UTC, so it compares right.
    return moment.astimezone(UTC)


def _sums() -> list[Any]:
    return [
        func.count().label("streams"),
        func.coalesce(func.sum(t.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(t.output_tokens), 0).label("output_tokens"),
        type_coerce(func.coalesce(func.sum(t.cost_usd), literal(0)), COST).label("cost_usd"),
    ]


def _decimal(value: Any) -> Decimal:
    # Rounded to the column's scale: SQLite sums floats, PostgreSQL sums decimals.
    return Decimal(value).quantize(Decimal("1e-8"))


def _day(conn: AsyncConnection) -> ColumnElement[str]:
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", t.started_at), "YYYY-MM-DD")
    return func.date(t.started_at)


def rows_json(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in ROW_COLUMNS:
        value = getattr(row, column.name)
        if isinstance(value, datetime):
            # SQLite gives the stored UTC wall time back without its zone.
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        elif isinstance(value, Decimal):
            value = float(value)
        out[column.name] = value
    return out


async def report(conn: AsyncConnection, query: UsageFilter) -> UsageReport:
    where = conditions(query)
    rows: Select[Any] = (
        select(*ROW_COLUMNS)
        .where(*where)
        .order_by(t.started_at.desc(), t.id.desc())
        .limit(query.limit)
    )
    found = [rows_json(row) for row in await conn.execute(rows)]
    total = (await conn.execute(select(*_sums()).where(*where))).one()
    return UsageReport(
        found,
        UsageTotals(
            int(total.streams),
            int(total.input_tokens),
            int(total.output_tokens),
            _decimal(total.cost_usd),
        ),
    )


async def groups(conn: AsyncConnection, query: UsageFilter) -> list[UsageGroup]:
    """Usage per user, UTC day and model, ordered by day, then user, then model."""
    day = _day(conn).label("day")
    stmt = (
        select(t.principal, day, t.model, *_sums())
        .where(*conditions(query))
        .group_by(t.principal, day, t.model)
        .order_by(day, t.principal, t.model)
    )
    return [
        UsageGroup(
            user=row.principal,
            day=str(row.day),
            model=row.model,
            streams=int(row.streams),
            input_tokens=int(row.input_tokens),
            output_tokens=int(row.output_tokens),
            cost_usd=_decimal(row.cost_usd),
        )
        for row in await conn.execute(stmt)
    ]


def totals_of(found: list[UsageGroup]) -> UsageTotals:
    return UsageTotals(
        sum(g.streams for g in found),
        sum(g.input_tokens for g in found),
        sum(g.output_tokens for g in found),
        sum((g.cost_usd for g in found), Decimal(0)),
    )
