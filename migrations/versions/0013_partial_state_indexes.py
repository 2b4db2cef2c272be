"""Partial indexes on the message state: `ix_messages_queued` (campaign_id, id) of queued
rows and `ix_messages_leased` (lease_expires_at) of sending rows replace the full indexes
on (campaign_id, state, id) and (state, lease_expires_at), which every status webhook
rewrote; `ix_messages_campaign` (campaign_id, id) serves reports and counts.

On PostgreSQL it also lets autovacuum clean `messages` after a fixed number of changes
(10,000 + 1% of the rows, instead of 20% of the rows): a claim walks the queued index in id
order, through the entries of the rows it already claimed until a vacuum removes them.

On a large PostgreSQL database this migration builds three indexes over `messages`: run
`campaign db upgrade` while no worker runs (minutes for tens of millions of rows).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as messages:
        messages.create_index("ix_messages_campaign", ["campaign_id", "id"])
        messages.create_index("ix_messages_queued", ["campaign_id", "id"],
                              sqlite_where=sa.text("state = 'queued'"), postgresql_where=sa.text("state = 'queued'"))
        messages.create_index("ix_messages_leased", ["lease_expires_at"],
                              sqlite_where=sa.text("state = 'sending'"), postgresql_where=sa.text("state = 'sending'"))
        messages.drop_index("ix_messages_sendable")
        messages.drop_index("ix_messages_lease")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE messages SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 10000,"
                   " autovacuum_analyze_scale_factor = 0.02)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE messages RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,"
                   " autovacuum_analyze_scale_factor)")
    with op.batch_alter_table("messages") as messages:
        messages.create_index("ix_messages_lease", ["state", "lease_expires_at"])
        messages.create_index("ix_messages_sendable", ["campaign_id", "state", "id"])
        messages.drop_index("ix_messages_leased")
        messages.drop_index("ix_messages_queued")
        messages.drop_index("ix_messages_campaign")
