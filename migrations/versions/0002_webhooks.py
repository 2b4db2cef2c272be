"""Webhooks: statuses waiting for their message, and the contact's latest opt-in.

Column types are spelled out here (not imported from campaign.models) so that this
revision stays what it was when the models change.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_statuses",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("wamid", sa.String(length=128), nullable=False),
        sa.Column("callback_data", sa.Text(), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("orphaned_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_statuses")),
    )
    with op.batch_alter_table("pending_statuses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pending_statuses_wamid"), ["wamid"], unique=False)
        batch_op.create_index(batch_op.f("ix_pending_statuses_message_id"), ["message_id"], unique=False)
        batch_op.create_index("ix_pending_statuses_waiting", ["orphaned_at", "first_seen_at"], unique=False)

    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("opted_in_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("opted_in_at")

    with op.batch_alter_table("pending_statuses", schema=None) as batch_op:
        batch_op.drop_index("ix_pending_statuses_waiting")
        batch_op.drop_index(batch_op.f("ix_pending_statuses_message_id"))
        batch_op.drop_index(batch_op.f("ix_pending_statuses_wamid"))

    op.drop_table("pending_statuses")
