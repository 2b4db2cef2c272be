"""Shared fixtures: every database test runs on SQLite and, when configured, on PostgreSQL."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from campaign.cli import main
from campaign.db import Database

POSTGRES_URL = os.environ.get("CAMPAIGN_TEST_POSTGRES_URL")
NO_POSTGRES = "CAMPAIGN_TEST_POSTGRES_URL is not set (.ci/run sets it): PostgreSQL variant skipped"


def _postgres_schema_url() -> Iterator[str]:
    """A fresh schema per test, dropped afterwards: isolation without a database per test."""
    assert POSTGRES_URL
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database's URL, on each dialect."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'campaign.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    yield from _postgres_schema_url()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with every migration applied, made once: each `db` test starts from a
    copy of it (running the migrations took about 80 ms a test)."""
    path = tmp_path_factory.mktemp("migrated") / "campaign.db"
    database = Database(Database.open(f"sqlite:///{path}", migrate=False).engine)
    database.upgrade()
    database.close()
    assert not path.with_name(path.name + "-wal").exists(), "the template's WAL was not checkpointed"
    return path


@pytest.fixture(scope="session")
def postgres_migrations() -> list[tuple[str, Any]]:
    """What the migrations send to an empty PostgreSQL schema, recorded once in a schema of
    their own: each `db` test replays it into its schema instead of running alembic (80-90 ms
    a test). Every statement is unqualified, so it lands in the test's search_path."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    sent: list[tuple[str, Any]] = []
    for url in _postgres_schema_url():
        database = Database(Database.open(url, migrate=False).engine)

        def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            assert not many, "a migration sent an executemany: replay it as one"
            sent.append((statement, parameters))

        event.listen(database.engine, "before_cursor_execute", keep)
        database.upgrade()
        database.close()
    return sent


@pytest.fixture
def db(database_url: str, request: pytest.FixtureRequest) -> Iterator[Database]:
    """A migrated database on each dialect."""
    if database_url.startswith("sqlite"):
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), make_url(database_url).database or "")
    database = Database(Database.open(database_url, migrate=False).engine)
    if database_url.startswith("postgresql"):
        with database.engine.begin() as conn:
            # Unless the `cli` fixture ran `campaign db upgrade` on this schema first.
            if conn.exec_driver_sql("SELECT to_regclass('alembic_version')").scalar() is None:
                for statement, parameters in request.getfixturevalue("postgres_migrations"):
                    conn.exec_driver_sql(statement, parameters)
    yield database
    database.close()


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Runs `campaign ...` in-process against the test database, from a scratch folder."""
    monkeypatch.chdir(tmp_path)
    for variable in ("WA_ACCESS_TOKEN", "WA_PHONE_NUMBER_ID", "WA_BUSINESS_ACCOUNT_ID", "WA_APP_SECRET", "WA_VERIFY_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("CAMPAIGN_DATABASE_URL", database_url)
    runner = CliRunner()

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    if database_url.startswith("postgresql"):
        assert run("db", "upgrade").exit_code == 0  # PostgreSQL is upgraded by the operator, not by each command
    return run
