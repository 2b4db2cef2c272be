"""Send lanes: each worker paces its own share of a sender's rate.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_lanes",
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("worker", sa.String(length=64), nullable=False),
        sa.Column("next_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("sender", "worker", name=op.f("pk_send_lanes")),
    )


def downgrade() -> None:
    op.drop_table("send_lanes")
