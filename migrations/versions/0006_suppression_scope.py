"""Suppressions gain a scope: everything, or marketing only.

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


def downgrade() -> None:
    with op.batch_alter_table("suppressions") as suppressions:
        suppressions.drop_column("scope")
