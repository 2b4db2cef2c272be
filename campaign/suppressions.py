"""The opt-out list: numbers and BSUIDs no campaign may message, honoured by import and by the dispatcher."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from campaign import csvfile, identity, phone
from campaign.clock import utcnow
from campaign.models import Suppression
from campaign.states import SuppressionScope, SuppressionSource
from campaign.sql import batches, insert_ignore


def read_numbers(path: str | Path, default_region: str | None = None) -> list[str]:
    """The numbers (and BSUIDs) of a file: a CSV with a phone column, a `user_id` column or
    both, or one number or BSUID per line."""
    import pandas as pd  # only for files: a worker that checks suppressions never loads it

    path = Path(path)
    try:
        layout = csvfile.inspect(path)
        frame = pd.read_csv(path, sep=layout.delimiter, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        columns = [frame[c] for c in (layout.phone_column, layout.user_id_column) if c is not None]
        start = 2
    except csvfile.NoPhoneColumn:  # not a CSV of numbers: one number per line
        columns = [pd.Series(path.read_text(encoding="utf-8-sig").splitlines())]
        start = 1
    numbers = []
    for column in columns:
        for line, raw in enumerate(column.tolist(), start=start):
            if raw.strip():
                numbers.extend(identities_of([raw], default_region) if identity.is_user_id(raw.strip())
                               else phone.normalize_many([raw], default_region, source=f"{path}: line {line}: "))
    return numbers


def identities_of(raws: tuple[str, ...] | list[str], default_region: str | None = None) -> list[str]:
    """What a user typed (`campaign suppress`): BSUIDs as they are, numbers to E.164 (or a
    `CampaignError` naming the first that is neither)."""
    user_ids = [r.strip() for r in raws if identity.is_user_id(r.strip())]
    return phone.normalize_many([r for r in raws if not identity.is_user_id(r.strip())], default_region) + user_ids


def suppress(
    session: Session,
    identities: list[str],
    *,
    reason: str | None = None,
    source: SuppressionSource = SuppressionSource.MANUAL,
    scope: SuppressionScope = SuppressionScope.ALL,
    now: datetime | None = None,
) -> int:
    """Add `identities` (E.164 numbers or BSUIDs) to the list; returns how many were not on it
    already. One suppressed for marketing only and now for everything is widened, never narrowed."""
    now = now or utcnow()
    added = 0
    for column, values in _by_column(identities):
        rows = [{"phone": None, "user_id": None, column.key: v, "reason": reason, "source": source.value,
                 "scope": scope.value, "created_at": now} for v in values]
        for batch in batches(rows):
            keys = [r[column.key] for r in batch]
            already = set(session.scalars(select(column).where(column.in_(keys))))
            session.execute(insert_ignore(session, Suppression), list(batch))
            if scope is SuppressionScope.ALL and already:
                session.execute(update(Suppression).where(column.in_(list(already)),
                                                          Suppression.scope != SuppressionScope.ALL.value)
                                .values(scope=SuppressionScope.ALL.value, reason=reason, source=source.value))
            added += len(batch) - len(already)
    return added


def unsuppress(session: Session, identities: list[str], sources: tuple[SuppressionSource, ...] | None = None) -> int:
    """Remove `identities` (E.164 numbers or BSUIDs) from the list, or only their suppressions
    from `sources`; returns how many were on it."""
    removed = 0
    for column, values in _by_column(identities):
        for batch in batches(values):
            statement = delete(Suppression).where(column.in_(batch))
            if sources is not None:
                statement = statement.where(Suppression.source.in_([s.value for s in sources]))
            removed += session.execute(statement).rowcount  # type: ignore[attr-defined]
    return removed


def _by_column(identities: list[str]) -> list[tuple[Any, list[str]]]:
    """The identities split by the column that holds them: numbers, then BSUIDs."""
    unique = list(dict.fromkeys(identities))
    user_ids = [i for i in unique if identity.is_user_id(i)]
    numbers = [i for i in unique if not identity.is_user_id(i)]
    return [(c, v) for c, v in ((Suppression.phone, numbers), (Suppression.user_id, user_ids)) if v]
