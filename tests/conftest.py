"""Shared fixtures: every database test runs on SQLite and, when configured, on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text
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


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database on each dialect."""
    database = Database(Database.open(database_url, migrate=False).engine)
    database.upgrade()
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
