"""A message in doubt (its request may have reached Meta) carries the time it may be sent again:
the grace of a dead worker's request, or the shorter one of a send Meta answered with a 5xx.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("in_doubt_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as messages:
        messages.drop_column("in_doubt_until")
