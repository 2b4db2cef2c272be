"""A contact's business-scoped user id (BSUID), and inbound news from users not known yet.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("contacts", sa.Column("user_id", sa.String(length=160), nullable=True))
    op.create_index(op.f("ix_contacts_user_id"), "contacts", ["user_id"], unique=True)
    op.create_table(
        "unmatched_inbound",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.String(length=160), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("item", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unmatched_inbound")),
    )
    op.create_index(op.f("ix_unmatched_inbound_user_id"), "unmatched_inbound", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_unmatched_inbound_user_id"), table_name="unmatched_inbound")
    op.drop_table("unmatched_inbound")
    op.drop_index(op.f("ix_contacts_user_id"), table_name="contacts")
    with op.batch_alter_table("contacts") as contacts:
        contacts.drop_column("user_id")
