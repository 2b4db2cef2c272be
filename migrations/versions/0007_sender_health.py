"""Sender and template health: what Meta says of each sender number, and the latest status of
each template, from webhooks and `GET /{phone-number-id}`.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "senders",
        sa.Column("phone_number_id", sa.String(length=64), nullable=False),
        sa.Column("display_phone_number", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("quality_rating", sa.String(length=16), nullable=True),
        sa.Column("quality_event", sa.String(length=32), nullable=True),
        sa.Column("quality_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("messaging_limit", sa.String(length=32), nullable=True),
        sa.Column("daily_limit", sa.BigInteger(), nullable=True),
        sa.Column("limit_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("mps", sa.Integer(), nullable=True),
        sa.Column("mps_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("health_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("phone_number_id", name=op.f("pk_senders")),
    )
    op.create_index(op.f("ix_senders_display_phone_number"), "senders", ["display_phone_number"])
    op.create_table(
        "template_statuses",
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("language", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", "language", name=op.f("pk_template_statuses")),
    )


def downgrade() -> None:
    op.drop_table("template_statuses")
    op.drop_index(op.f("ix_senders_display_phone_number"), table_name="senders")
    op.drop_table("senders")
