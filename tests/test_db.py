"""The schema: SQLite creates and upgrades itself; PostgreSQL refuses until upgraded."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from campaign.db import Database
from campaign.exceptions import CampaignError


def test_sqlite_is_created_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database.open(f"sqlite:///{tmp_path / 'new.db'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    current, head = db.schema_revisions()
    assert current == head
    assert {"campaigns", "contacts", "messages", "webhook_events", "suppressions", "imports"} <= set(inspect(db.engine).get_table_names())


def test_the_outbox_has_its_unique_constraints_and_state_indexes(db: Database) -> None:
    inspector = inspect(db.engine)
    uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("messages")}
    assert ("campaign_id", "contact_id") in uniques and ("wamid",) in uniques
    assert ("phone",) in {tuple(u["column_names"]) for u in inspector.get_unique_constraints("contacts")}
    assert ("content_hash",) in {tuple(u["column_names"]) for u in inspector.get_unique_constraints("webhook_events")}
    indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("messages")}
    assert indexes["ix_messages_queued"] == ["campaign_id", "id"]
    assert indexes["ix_messages_leased"] == ["lease_expires_at"]
    assert indexes["ix_messages_reached"] == ["sent_at", "contact_id"]
    assert "ix_messages_sendable" not in indexes


def test_the_claim_recovery_and_messaging_limit_walk_their_partial_indexes(db: Database) -> None:
    """Only queued rows are in the claim's index and only sending ones in the lease index,
    so a status webhook moving a message from sent to read rewrites neither; a query must
    say the state as a literal for the database to use them."""
    from datetime import datetime, timezone

    from sqlalchemy import select

    from campaign.models import Message, in_state
    from campaign.outbox import _reached_count_query
    from campaign.states import MessageState

    now = datetime(2026, 1, 5, tzinfo=timezone.utc)
    claim = (select(Message.id).where(Message.campaign_id.in_([1]), in_state(MessageState.QUEUED))
             .order_by(Message.id).limit(100))
    recover = select(Message.id).where(in_state(MessageState.SENDING), Message.lease_expires_at < now)
    # The messaging limit's count at every claim: the last day's sends, not every message ever.
    reached = _reached_count_query(now)
    explain = "EXPLAIN QUERY PLAN " if db.engine.dialect.name == "sqlite" else "EXPLAIN "
    with db.engine.connect() as conn:
        if db.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")  # an empty table: make the planner show its index
        for statement, indexes in ((claim, ["ix_messages_queued"]), (recover, ["ix_messages_leased"]),
                                   (reached, ["ix_messages_reached", "ix_messages_leased"])):
            compiled = statement.compile(conn, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(row) for row in conn.exec_driver_sql(explain + str(compiled)))
            assert all(index in plan for index in indexes), plan


def test_a_behind_schema_is_refused_on_postgresql_and_upgraded_on_sqlite(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        Database.open(database_url)  # creates it
        return
    with pytest.raises(CampaignError, match=r"run `campaign db upgrade`"):
        Database.open(database_url)
    db = Database.open(database_url, migrate=False)
    db.upgrade()
    Database.open(database_url).close()  # now current: accepted


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match="does not exist"):
        Database.open(f"sqlite:///{tmp_path / 'nope' / 'x.db'}")


def test_a_sqlite_transaction_takes_the_write_lock_up_front(db: Database) -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's locking only")
    with db.session() as session:
        session.execute(text("SELECT 1"))  # even a read starts the transaction with BEGIN IMMEDIATE
        other = db.engine.raw_connection()
        other.execute("PRAGMA busy_timeout=0")  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="locked"):
            other.execute("BEGIN IMMEDIATE")  # type: ignore[attr-defined]
        other.close()


def test_db_upgrade_command(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("db", "upgrade")
    assert result.exit_code == 0
    assert result.stdout.startswith("database at revision ")


@pytest.mark.parametrize("built_by", ["alembic", "the db fixture"])
def test_the_migrations_build_the_schema_the_models_describe(database_url: str, built_by: str,
                                                              request: pytest.FixtureRequest) -> None:
    """A column, table or index added to the models without its migration (or the other way)
    would work in a test that creates nothing by hand and fail on a user's upgraded database.
    The `db` fixture copies or replays the migrations once run: it must build the same."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from campaign.models import Base

    if built_by == "alembic":
        db = Database.open(database_url, migrate=False)
        db.upgrade()
    else:
        db = request.getfixturevalue("db")
    with db.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    db.close()
    assert differences == []
