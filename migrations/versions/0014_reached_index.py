"""`ix_messages_reached` (sent_at, contact_id) of business-initiated messages: the messaging
limit's count (distinct people reached outside their window in the moving 24 hours) reads the
last day's entries instead of scanning every message the database holds. With a limit (set,
or the tier Meta reports) every claim makes that count under a lock all workers share.

On a large PostgreSQL database this builds an index over `messages`: run
`campaign db upgrade` while no worker runs.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as messages:
        messages.create_index("ix_messages_reached", ["sent_at", "contact_id"],
                              sqlite_where=sa.text("business_initiated = 1"),
                              postgresql_where=sa.text("business_initiated"))


def downgrade() -> None:
    with op.batch_alter_table("messages") as messages:
        messages.drop_index("ix_messages_reached")
