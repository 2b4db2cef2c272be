"""PostgreSQL: `contacts` keeps a tenth of each page free (fillfactor 90).

A claim reserves every recipient it takes (`next_send_at`) and the result writes when it
was sent: two updates a contact a campaign, of columns no index holds. With full pages
(the default, as an import leaves them) each first update moved the row to another page
and added an entry to every index of `contacts` (id, phone, user id), whose pages at ten
million contacts no longer stay in memory: the reservation cost 13-16 µs a message at
100k recipients and 40-55 µs at 10M (benchmarks/scale.py, two runs). With room on the page
the update stays there (a HOT update) and touches no index.

It applies to pages written from now on (an import's, or a `VACUUM FULL contacts`).
SQLite has no such setting: nothing to do there.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE contacts SET (fillfactor = 90)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE contacts RESET (fillfactor)")
