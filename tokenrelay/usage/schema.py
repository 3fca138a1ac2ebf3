"""The ledger's tables as SQLAlchemy Core: `stream_usage`, a row per stream (and per
request of a batch); the stored conversations, `conversations` and
`conversation_messages`; the batches, `batches` and `batch_requests`.

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
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
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
    # "stream" (every streaming route), or "batch": a request of a batch (its stream_id
    # is "<batch id>.<position>", its request_id "<batch id>/<custom_id>").
    Column("route", String(16), nullable=False, server_default="stream"),
    # The idempotency of writes: a batch retried after an ambiguous failure (the commit
    # may have happened) inserts nothing twice (ON CONFLICT (stream_id) DO NOTHING).
    UniqueConstraint("stream_id", name="uq_stream_usage_stream_id"),
    Index("ix_stream_usage_principal_started_at", "principal", "started_at"),
    Index("ix_stream_usage_started_at", "started_at"),
)

# Conversations (tokenrelay/conversations/): a row per conversation, a row per turn.
# `pending` is what answer the conversation waits for: a claim ("claim:…") while a send
# is starting its stream, then that stream's id until its end is stored. A send sets it
# by a conditional UPDATE (only where it is NULL), so two sends never interleave, on
# however many instances.
conversations = Table(
    "conversations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("title", String(200)),
    Column("system", Text),
    Column("model", String(128), nullable=False),
    Column("turns", Integer, nullable=False),
    Column("pending", String(64)),
    Column("pending_since", UTC_TIME),
    Column("created_at", UTC_TIME, nullable=False),
    Column("updated_at", UTC_TIME, nullable=False),
    # The list: the owner's, newest first, paged by (updated_at, id).
    Index("ix_conversations_owner_updated_at", "owner", "updated_at", "id"),
)

conversation_messages = Table(
    "conversation_messages",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column(
        "conversation_id",
        String(40),
        ForeignKey("conversations.id", ondelete="CASCADE", name="fk_conversation_messages_conv"),
        nullable=False,
    ),
    Column("position", Integer, nullable=False),  # 0, 1, 2, … within the conversation
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),  # JSON: a string or a list of content blocks
    Column("status", String(32), nullable=False),
    Column("stream_id", String(64)),
    Column("error", Text),
    Column("created_at", UTC_TIME, nullable=False),
    UniqueConstraint("conversation_id", "position", name="uq_conversation_messages_position"),
)

# Batches (tokenrelay/batches/): a row per batch, a row per request in it. The results
# land in `stream_usage` once: in the transaction whose conditional UPDATE sets
# `results_recorded` (only where it is false), however many instances or readers try.
batches = Table(
    "batches",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("upstream_id", String(128)),  # NULL while it is being submitted
    Column("deployment", String(128), nullable=False),
    # submitting | in_progress | canceling | ended
    Column("processing_status", String(32), nullable=False),
    Column("requests", Integer, nullable=False),
    Column("processing", Integer, nullable=False),
    Column("succeeded", Integer, nullable=False),
    Column("errored", Integer, nullable=False),
    Column("canceled", Integer, nullable=False),
    Column("expired", Integer, nullable=False),
    Column("created_at", UTC_TIME, nullable=False),
    Column("ended_at", UTC_TIME),
    Column("refreshed_at", UTC_TIME, nullable=False),
    Column("results_recorded", Boolean, nullable=False),
    Column("cost_usd", COST),  # NULL until the results are recorded
    # The list: the owner's, newest first.
    Index("ix_batches_owner_created_at", "owner", "created_at", "id"),
    # The refresher's: the batches whose results are not in yet.
    Index("ix_batches_results_recorded", "results_recorded"),
)

batch_requests = Table(
    "batch_requests",
    metadata,
    Column(
        "batch_id",
        String(40),
        ForeignKey("batches.id", ondelete="CASCADE", name="fk_batch_requests_batch"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True),  # 0, 1, 2, … in the input's order
    Column("custom_id", String(64), nullable=False),
    Column("model", String(128), nullable=False),  # the model asked for
    Column("result", Text),  # JSON: the line GET /api/batches/{id}/results gives; NULL before
)
