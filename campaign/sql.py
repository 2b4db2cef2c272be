"""Statements written once for both dialects (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Insert
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


def batches(items: Sequence[T], size: int = IN_BATCH) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items (for `IN (...)` lists and bulk writes)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
