"""Dispatch: the pair-limit reservation per contact, the messaging-limit flag and pair-rate
hits per message, and the shared send slots per sender number.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch_op:
        batch_op.add_column(sa.Column("next_send_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("messages") as batch_op:
        batch_op.add_column(sa.Column("business_initiated", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("pair_hits", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "send_slots",
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("next_at", sa.Double(), nullable=False),
        sa.Column("rate", sa.Double(), nullable=False),
        sa.Column("adjusted_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("sender", name=op.f("pk_send_slots")),
    )


def downgrade() -> None:
    op.drop_table("send_slots")
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_column("pair_hits")
        batch_op.drop_column("business_initiated")
    with op.batch_alter_table("contacts") as batch_op:
        batch_op.drop_column("next_send_at")
