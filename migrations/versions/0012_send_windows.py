"""Send windows in the recipient's local time (`campaign create --send-window`): the
campaign's window and default zone, and each contact's set of time zones.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("send_window", sa.String(16), nullable=True))
    op.add_column("campaigns", sa.Column("timezone", sa.String(64), nullable=True))
    op.create_table(
        "zone_sets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("zones", sa.String(2000), nullable=False, unique=True),
    )
    op.add_column("contacts", sa.Column("zone_set_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("contacts") as contacts:
        contacts.drop_column("zone_set_id")
    op.drop_table("zone_sets")
    with op.batch_alter_table("campaigns") as campaigns:
        campaigns.drop_column("timezone")
        campaigns.drop_column("send_window")
