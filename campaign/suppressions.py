"""The opt-out list: numbers no campaign may message, honoured by import and by the dispatcher."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from campaign import csvfile, phone
from campaign.clock import utcnow
from campaign.models import Suppression
from campaign.states import SuppressionScope, SuppressionSource
from campaign.sql import batches, insert_ignore


def read_numbers(path: str | Path, default_region: str | None = None) -> list[str]:
    """The numbers of a file: a CSV with a phone column, or one number per line."""
    import pandas as pd  # only for files: a worker that checks suppressions never loads it

    path = Path(path)
    try:
        layout = csvfile.inspect(path)
        column = pd.read_csv(path, sep=layout.delimiter, dtype=str, keep_default_na=False, encoding="utf-8-sig")[
            layout.phone_column
        ]
        start = 2
    except csvfile.NoPhoneColumn:  # not a CSV of numbers: one number per line
        column = pd.Series(path.read_text(encoding="utf-8-sig").splitlines())
        start = 1
    numbers = []
    for line, raw in enumerate(column.tolist(), start=start):
        if raw.strip():
            numbers.extend(phone.normalize_many([raw], default_region, source=f"{path}: line {line}: "))
    return numbers


def suppress(
    session: Session,
    numbers: list[str],
    *,
    reason: str | None = None,
    source: SuppressionSource = SuppressionSource.MANUAL,
    scope: SuppressionScope = SuppressionScope.ALL,
    now: datetime | None = None,
) -> int:
    """Add E.164 `numbers` to the list; returns how many were not on it already. A number
    suppressed for marketing only and now for everything is widened, never narrowed."""
    now = now or utcnow()
    rows = [{"phone": n, "reason": reason, "source": source.value, "scope": scope.value, "created_at": now}
            for n in dict.fromkeys(numbers)]
    added = 0
    for batch in batches(rows):
        phones = [r["phone"] for r in batch]
        already = set(session.scalars(select(Suppression.phone).where(Suppression.phone.in_(phones))))
        session.execute(insert_ignore(session, Suppression), list(batch))
        if scope is SuppressionScope.ALL and already:
            session.execute(update(Suppression).where(Suppression.phone.in_(list(already)),
                                                      Suppression.scope != SuppressionScope.ALL.value)
                            .values(scope=SuppressionScope.ALL.value, reason=reason, source=source.value))
        added += len(batch) - len(already)
    return added


def unsuppress(session: Session, numbers: list[str]) -> int:
    """Remove E.164 `numbers` from the list; returns how many were on it."""
    removed = 0
    for batch in batches(list(dict.fromkeys(numbers))):
        result = session.execute(delete(Suppression).where(Suppression.phone.in_(batch)))
        removed += result.rowcount  # type: ignore[attr-defined]
    return removed

