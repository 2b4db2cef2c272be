"""What Meta reports of a message's price in its status webhooks (per-message pricing since
July 2025): `pricing.billable`, `pricing.pricing_model` and `pricing.type`, beside the
`pricing_category` kept since 0001.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("pricing_billable", sa.Boolean(), nullable=True))
    op.add_column("messages", sa.Column("pricing_model", sa.String(16), nullable=True))
    op.add_column("messages", sa.Column("pricing_type", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as messages:
        messages.drop_column("pricing_type")
        messages.drop_column("pricing_model")
        messages.drop_column("pricing_billable")
