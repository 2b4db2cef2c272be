"""Suppressions gain a scope (everything, or marketing only); a message counts its waits for
Meta's per-user marketing limit, and the wamids of sends Meta failed with it are retired.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("suppressions", sa.Column("scope", sa.String(length=16), nullable=False, server_default="all"))
    op.add_column("messages", sa.Column("marketing_waits", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "retired_wamids",
        sa.Column("wamid", sa.String(length=128), nullable=False),
        sa.Column("message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("wamid", name=op.f("pk_retired_wamids")),
    )


def downgrade() -> None:
    op.drop_table("retired_wamids")
    with op.batch_alter_table("messages") as messages:
        messages.drop_column("marketing_waits")
    with op.batch_alter_table("suppressions") as suppressions:
        suppressions.drop_column("scope")
