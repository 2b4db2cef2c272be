"""Real templates: a campaign's binding and the template definition it was checked against,
replies attributed to messages, and uploaded media kept for reuse.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("binding", sa.Text(), nullable=True))
    op.add_column("campaigns", sa.Column("template_definition", sa.Text(), nullable=True))
    op.add_column("campaigns", sa.Column("template_checked_at", sa.DateTime(timezone=True), nullable=True))
    # A row's empty value is one of the parameter problems Meta refuses: one reason, bad_param.
    with op.batch_alter_table("imports") as imports:
        imports.alter_column("missing_param", new_column_name="bad_param")
    op.add_column("messages", sa.Column("replied_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("reply", sa.Text(), nullable=True))
    op.create_table(
        "media_uploads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("mime_type", sa.String(length=128), nullable=False),
        sa.Column("media_id", sa.String(length=128), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_media_uploads")),
        sa.UniqueConstraint("sender", "path", name=op.f("uq_media_uploads_sender_path")),
    )
    op.create_index(op.f("ix_media_uploads_digest"), "media_uploads", ["digest"])


def downgrade() -> None:
    op.drop_index(op.f("ix_media_uploads_digest"), table_name="media_uploads")
    op.drop_table("media_uploads")
    op.drop_column("messages", "reply")
    with op.batch_alter_table("imports") as imports:
        imports.alter_column("bad_param", new_column_name="missing_param")
    op.drop_column("messages", "replied_at")
    op.drop_column("campaigns", "template_checked_at")
    op.drop_column("campaigns", "template_definition")
    op.drop_column("campaigns", "binding")
