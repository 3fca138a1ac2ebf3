"""The ledger's one table, `stream_usage`: a row per stream, as SQLAlchemy Core.

This is what the code reads and writes; the migrations in `migrations/versions/` are
what creates it, frozen per revision (a test checks that the two agree).

`cost_usd` is NUMERIC(18, 8), not a float: prices give costs to 8 decimal places
(`ModelTable.cost_usd` rounds there), and a ledger's sums must be exact; a float
column would drift by a few ulps over a month of rows. (SQLite has no decimal type:
SQLAlchemy stores a REAL and rounds what it reads back to the 8 places.)
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite autoincrements only an INTEGER PRIMARY KEY.
_ID = BigInteger().with_variant(Integer(), "sqlite")
COST = Numeric(18, 8)
UTC_TIME = DateTime(timezone=True)

stream_usage = Table(
    "stream_usage",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("stream_id", String(64), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("principal", String(255), nullable=False),
    Column("model", String(128), nullable=False),
    Column("served_model", String(128), nullable=False),
    Column("status", String(32), nullable=False),
    Column("stop_reason", String(64)),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("cache_creation_input_tokens", Integer, nullable=False),
    Column("cache_read_input_tokens", Integer, nullable=False),
    Column("cost_usd", COST, nullable=False),
    Column("estimated", Boolean, nullable=False),
    Column("cached", Boolean, nullable=False),
    Column("coalesced", Integer, nullable=False),
    Column("retries", Integer, nullable=False),
    Column("continuations", Integer, nullable=False),
    Column("ttft_ms", Float),
    Column("duration_ms", Float, nullable=False),
    Column("started_at", UTC_TIME, nullable=False),
    Column("finished_at", UTC_TIME, nullable=False),
    # The idempotency of writes: a batch retried after an ambiguous failure (the commit
    # may have happened) inserts nothing twice (ON CONFLICT (stream_id) DO NOTHING).
    UniqueConstraint("stream_id", name="uq_stream_usage_stream_id"),
    Index("ix_stream_usage_principal_started_at", "principal", "started_at"),
    Index("ix_stream_usage_started_at", "started_at"),
)
