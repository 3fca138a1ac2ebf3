"""The ledger from the command line: `tokenrelay db upgrade` and `tokenrelay usage`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rich.table import Table

from tokenrelay.usage import migrate, query
from tokenrelay.usage.database import open_engine
from tokenrelay.usage.report import UsageFilter, UsageGroup, UsageTotals


class NoLedger(Exception):
    """The database has no (or an older) ledger schema."""


async def upgrade_database(url: str) -> bool:
    """`upgrade head` on the database at `url`; True when anything was applied."""
    engine = open_engine(url)
    try:
        return await migrate.upgrade(engine)
    finally:
        await engine.dispose()


async def read_groups(url: str, usage: UsageFilter) -> list[UsageGroup]:
    engine = open_engine(url)
    try:
        async with engine.connect() as conn:
            revision = await migrate.current_revision(conn)
            if revision != migrate.HEAD:
                raise NoLedger(
                    f"the database is at revision {revision or 'none'}, not {migrate.HEAD}: "
                    "run 'tokenrelay db upgrade'"
                )
            return await query.groups(conn, usage)
    finally:
        await engine.dispose()


def _cost(value: Decimal) -> str:
    return f"{value:.8f}"


def usage_json(groups: list[UsageGroup]) -> dict[str, Any]:
    return {
        "groups": [g.as_json() for g in groups],
        "totals": query.totals_of(groups).as_json(),
    }


def usage_table(groups: list[UsageGroup]) -> Table:
    totals: UsageTotals = query.totals_of(groups)
    table = Table(title="Usage by user, day (UTC) and model", show_footer=True)
    table.add_column("user", footer="total")
    table.add_column("day")
    table.add_column("model")
    for name, total in (
        ("streams", totals.streams),
        ("input tokens", totals.input_tokens),
        ("output tokens", totals.output_tokens),
    ):
        table.add_column(name, footer=str(total), justify="right")
    table.add_column("cost (USD)", footer=_cost(totals.cost_usd), justify="right")
    for g in groups:
        table.add_row(
            g.user,
            g.day,
            g.model,
            str(g.streams),
            str(g.input_tokens),
            str(g.output_tokens),
            _cost(g.cost_usd),
        )
    return table
