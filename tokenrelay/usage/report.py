"""What a usage query asks and answers, free of SQLAlchemy, so the HTTP layer and the
CLI can name them without loading a database driver.

`UsageFilter` bounds `started_at` as a half-open range `[since, until)`, in UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from tokenrelay.usage.record import UsageSink


@dataclass(frozen=True, slots=True)
class UsageFilter:
    since: datetime | None = None  # aware, inclusive
    until: datetime | None = None  # aware, exclusive
    model: str | None = None
    user: str | None = None
    limit: int = 100  # rows returned; the totals cover every matching row


@dataclass(frozen=True, slots=True)
class UsageTotals:
    streams: int
    input_tokens: int
    output_tokens: int
    # Exact: the column is NUMERIC(18, 8), and so is the sum.
    cost_usd: Decimal

    def as_json(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": float(self.cost_usd),
        }


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """One user's usage of one model on one UTC day."""

    user: str
    day: str  # YYYY-MM-DD, UTC
    model: str
    streams: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal

    def as_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "day": self.day,
            "model": self.model,
            "streams": self.streams,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": float(self.cost_usd),
        }


@dataclass(frozen=True, slots=True)
class UsageReport:
    rows: list[dict[str, Any]]  # newest first, JSON-ready (ISO 8601 UTC timestamps)
    totals: UsageTotals


@runtime_checkable
class Ledger(UsageSink, Protocol):
    """A usage sink that keeps its records and answers queries over them."""

    async def open(self) -> None:
        """Bring the schema up to date and start writing in the background."""
        ...

    async def report(self, query: UsageFilter) -> UsageReport:
        """Matching rows (at most `query.limit`) and the totals of all that match;
        raises `LedgerUnavailable` when the database cannot be reached."""
        ...
