"""Batches: `batches` and their requests, `batch_requests`; `stream_usage.route`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every row so far is a stream's: the default says so.
    op.add_column(
        "stream_usage",
        sa.Column("route", sa.String(16), nullable=False, server_default="stream"),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("upstream_id", sa.String(128)),
        sa.Column("deployment", sa.String(128), nullable=False),
        sa.Column("processing_status", sa.String(32), nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("processing", sa.Integer, nullable=False),
        sa.Column("succeeded", sa.Integer, nullable=False),
        sa.Column("errored", sa.Integer, nullable=False),
        sa.Column("canceled", sa.Integer, nullable=False),
        sa.Column("expired", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("results_recorded", sa.Boolean, nullable=False),
        sa.Column("cost_usd", sa.Numeric(18, 8)),
    )
    op.create_index("ix_batches_owner_created_at", "batches", ["owner", "created_at", "id"])
    op.create_index("ix_batches_results_recorded", "batches", ["results_recorded"])
    op.create_table(
        "batch_requests",
        sa.Column(
            "batch_id",
            sa.String(40),
            sa.ForeignKey("batches.id", ondelete="CASCADE", name="fk_batch_requests_batch"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("custom_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("result", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("batch_requests")
    op.drop_index("ix_batches_results_recorded", table_name="batches")
    op.drop_index("ix_batches_owner_created_at", table_name="batches")
    op.drop_table("batches")
    with op.batch_alter_table("stream_usage") as batch:
        batch.drop_column("route")
