"""Statements written once for both dialects (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Insert, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

T = TypeVar("T")

# SQLite allows 32,766 bound variables per statement (3.32+); stay well under it.
IN_BATCH = 5_000


def insert_ignore(session: Session, model: Any) -> Insert:
    """`INSERT ... ON CONFLICT DO NOTHING` for the session's dialect."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(model).on_conflict_do_nothing()


# PostgreSQL advisory locks, transaction-scoped: one key per thing that must be done by one
# process at a time across hosts. The keys are arbitrary but fixed (every worker and
# receiver must agree on them) and must not collide with another application's locks in
# the same database. SQLite needs none: `BEGIN IMMEDIATE` already serializes writers.
MESSAGING_LIMIT_LOCK = 4242001
"""Claims that spend the messaging-limit budget (distinct users reached in 24 hours)."""
RECONCILER_LOCK = 7235005
"""Applying webhook events: one reconciler at a time, however many receivers."""


def advisory_lock(session: Session, key: int) -> None:
    """Hold `key` until the session's transaction ends (PostgreSQL; nothing on SQLite)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def batches(items: Sequence[T], size: int = IN_BATCH) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items (for `IN (...)` lists and bulk writes)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
