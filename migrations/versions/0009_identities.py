"""A person known only by a business-scoped user id: contacts and suppressions without a phone
number, and the ids a contact was known by before Meta re-keyed it (a changed number).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contacts") as contacts:
        contacts.alter_column("phone", existing_type=sa.String(length=20), nullable=True)
    with op.batch_alter_table("suppressions") as suppressions:
        suppressions.alter_column("phone", existing_type=sa.String(length=20), nullable=True)
        suppressions.add_column(sa.Column("user_id", sa.String(length=160), nullable=True))
        suppressions.create_index(op.f("ix_suppressions_user_id"), ["user_id"], unique=True)
    op.create_table(
        "contact_aliases",
        sa.Column("identity", sa.String(length=160), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], name=op.f("fk_contact_aliases_contact_id_contacts")),
        sa.PrimaryKeyConstraint("identity", name=op.f("pk_contact_aliases")),
    )
    op.create_index(op.f("ix_contact_aliases_contact_id"), "contact_aliases", ["contact_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_contact_aliases_contact_id"), table_name="contact_aliases")
    op.drop_table("contact_aliases")
    op.execute("DELETE FROM suppressions WHERE phone IS NULL")
    op.execute("DELETE FROM messages WHERE contact_id IN (SELECT id FROM contacts WHERE phone IS NULL)")
    op.execute("DELETE FROM contacts WHERE phone IS NULL")
    with op.batch_alter_table("suppressions") as suppressions:
        suppressions.drop_index(op.f("ix_suppressions_user_id"))
        suppressions.drop_column("user_id")
        suppressions.alter_column("phone", existing_type=sa.String(length=20), nullable=False)
    with op.batch_alter_table("contacts") as contacts:
        contacts.alter_column("phone", existing_type=sa.String(length=20), nullable=False)
