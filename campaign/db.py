"""The database edge: engines with the right SQLite pragmas, sessions, and the schema's version.

SQLite (WAL) is the embedded default: every command creates or upgrades it itself.
PostgreSQL is shared by many workers and hosts: a command whose schema is behind refuses,
because an upgrade there is an operator's decision (`campaign db upgrade`).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from campaign.exceptions import CampaignError

SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_ARGS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                         "keepalives_count": 3}
"""libpq settings for a server that went away: a connection attempt gives up after 10 s
instead of the system's TCP timeout (minutes), and an idle connection to a host that
vanished without closing it (a failover, a cable) is found dead within about a minute.
A setting given in the URL wins. Dropped connections are replaced on checkout
(`pool_pre_ping`), so after a restart a pooled connection is never handed out dead."""
_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o error")


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached or cannot answer right now (down,
    restarting, the connection dropped, the pool exhausted, SQLite's lock held past the busy
    timeout), as opposed to a statement it refused: the same unit of work can be tried again
    once it is back. Callers that wait and retry (the dispatcher, the reconciler) ask this."""
    if isinstance(exc, PoolTimeoutError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True  # SQLAlchemy recognised a disconnect
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    if type(exc.orig).__module__.startswith("sqlite3"):
        return any(word in str(exc.orig).lower() for word in _SQLITE_TRANSIENT)
    # PostgreSQL (psycopg): connection failures, the server shutting down (57P01-57P03),
    # serialization failures and deadlocks, cancelled statements: none is about the statement.
    return True


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_db_engine(url: str) -> Engine:
    """An engine for `url`; on SQLite, WAL, foreign keys, a busy timeout and `BEGIN IMMEDIATE`.

    pysqlite opens a transaction only before the first DML, so a read-then-write transaction
    can interleave with another process's (library-notes.md measured 97,400 claims of
    50,000 rows across 4 processes). Transactions therefore start with `BEGIN IMMEDIATE`,
    which takes the write lock up front; a read-only connection can ask for a plain
    `BEGIN` with `execution_options(sqlite_deferred=True)` so long reads (reports) do not
    block writers.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CampaignError(f"CAMPAIGN_DATABASE_URL {url!r} is not a database URL") from None
    if parsed.get_backend_name() != "sqlite":
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args = ({key: value for key, value in POSTGRES_CONNECT_ARGS.items() if key not in parsed.query}
                        if parsed.get_backend_name() == "postgresql" else {})
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)

    if parsed.database and parsed.database != ":memory:":
        folder = Path(parsed.database).expanduser().parent
        if not folder.is_dir():
            raise CampaignError(f"database folder {str(folder)!r} does not exist")
    engine = create_engine(
        parsed,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "isolation_level": None},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA temp_store=MEMORY")  # the importer's staging table
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        deferred = conn.get_execution_options().get("sqlite_deferred", False)
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

    return engine


class Database:
    """An engine and its session factory; the library's handle on the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Database:
        """Connect, and make sure the schema is current (see module docstring)."""
        db = cls(create_db_engine(url))
        if migrate:
            db.ensure_schema()
        return db

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only unit of work that never blocks SQLite writers."""
        with self.engine.connect().execution_options(sqlite_deferred=True) as conn:
            with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                yield session

    def reachable(self) -> bool:
        """Whether the database answers a `SELECT 1` now (after a `database_unavailable`
        error: tells an outage from a statement that fails on a database that is up)."""
        try:
            with self.engine.connect().execution_options(sqlite_deferred=True) as conn:
                conn.exec_driver_sql("SELECT 1").scalar()
        except (DBAPIError, PoolTimeoutError):
            return False
        return True

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ------------------------------------------------------------------------

    def schema_revisions(self) -> tuple[str | None, str]:
        """(current revision of the database, newest revision the code knows)."""
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        assert head is not None
        try:
            with self.engine.connect().execution_options(sqlite_deferred=True) as conn:
                current = MigrationContext.configure(conn).get_current_revision()
        except OperationalError as exc:
            raise CampaignError(f"cannot open the database: {one_line(exc)}") from None
        return current, head

    def upgrade(self) -> None:
        """Apply every migration not yet applied (`campaign db upgrade`)."""
        config = _alembic_config()
        try:
            with self.engine.connect().execution_options(sqlite_deferred=True) as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                if conn.in_transaction():
                    conn.commit()
        except OperationalError as exc:
            raise CampaignError(f"cannot upgrade the database: {one_line(exc)}") from None

    def ensure_schema(self) -> None:
        current, head = self.schema_revisions()
        if current == head:
            return
        if is_sqlite(self.engine):
            self.upgrade()
            return
        raise CampaignError(
            f"the database schema is at {current or 'nothing'}, this version needs {head}: "
            "run `campaign db upgrade`"
        )


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(importlib.resources.files("campaign.migrations")))
    return config


def one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
