"""Messaging-limit benchmark: what a claim costs when the sender has a daily limit, as the
history of business-initiated messages grows.

With a messaging limit (`CAMPAIGN_DAILY_UNIQUE_LIMIT`, or the tier Meta reports for the
sender) every claim counts the distinct people reached outside their window in the moving
24 hours, under a lock all workers share. A sender on a limited tier sends at most its limit
a day, so the last 24 hours hold about that many messages however long the history is: the
count must cost what the last day holds, not what the database holds.

For each history size H it builds, on a fresh database (a SQLite file, or a PostgreSQL
schema), H contacts each with one business-initiated template `read`, sent `--per-day`
a day back from now (H = 1,000,000 at 100,000 a day is ten days of history), plus a running
campaign of `--queued` new recipients. It then times `Outbox.claim` in claims of
`--claim-batch` (the median claim's cost a message) without a limit and with
`--limit` (a budget the claims never exhaust), and prints µs a message for both, per H.

    python benchmarks/messaging_limit.py                        # SQLite, H = 100k, 1M, 5M
    python benchmarks/messaging_limit.py --history 100000 5000000 \\
        --database postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select, text, update  # noqa: E402

from campaign import campaigns  # noqa: E402
from campaign.db import Database  # noqa: E402
from campaign.models import Campaign, Contact, Message  # noqa: E402
from campaign.outbox import Outbox  # noqa: E402
from scale import Place  # noqa: E402

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)


def numbers(count: int, first: int, postgres: bool) -> str:
    """A SELECT of `count` rows `i` from `first` (generate_series, or a recursive CTE)."""
    if postgres:
        return f"SELECT i FROM generate_series({first}, {first + count - 1}) AS i"
    return (f"WITH RECURSIVE s(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM s WHERE i < {first + count - 1}) "
            "SELECT i FROM s")


def build(db: Database, history: int, queued: int, per_day: int) -> None:
    postgres = db.engine.dialect.name == "postgresql"
    with db.session() as session:
        for name in ("history", "current"):
            campaigns.create(session, campaigns.CampaignSpec(name, "order_update", "en_US", []))
    with db.session() as session:
        past, current = (session.scalar(select(Campaign.id).where(Campaign.name == n)) for n in ("history", "current"))
        session.execute(text(f"INSERT INTO contacts (id, phone) SELECT i, '+4915' || (10000000 + i) FROM "
                             f"({numbers(history + queued, 1, postgres)}) AS n"))
        # Message i was sent (history - i) / per_day days ago: the newest per_day in the last day.
        seconds = 86_400 / per_day
        ago = f"make_interval(secs => ({history} - i) * {seconds})" if postgres else None
        sent = (f"TIMESTAMPTZ '{NOW:%Y-%m-%d %H:%M:%S}+00' - {ago}" if postgres
                else f"datetime('{NOW:%Y-%m-%d %H:%M:%S}', '-' || (({history} - i) * {seconds}) || ' seconds')")
        queued_at = f"'{NOW - timedelta(days=30):%Y-%m-%d %H:%M:%S}{'+00' if postgres else ''}'"
        session.execute(text(
            "INSERT INTO messages (campaign_id, contact_id, params, kind, state, attempts, pair_hits, marketing_waits,"
            " queued_at, sending_at, sent_at, delivered_at, read_at, business_initiated, wamid) "
            f"SELECT {past}, i, '{{}}', 'template', 'read', 1, 0, 0, {queued_at}, {sent}, {sent}, {sent}, {sent}, "
            f"{'true' if postgres else 1}, 'wamid.h.' || i FROM ({numbers(history, 1, postgres)}) AS n"))
        session.execute(text(
            "INSERT INTO messages (campaign_id, contact_id, params, state, attempts, pair_hits, marketing_waits,"
            f" queued_at, business_initiated) SELECT {current}, i, '{{}}', 'queued', 0, 0, 0, {queued_at}, "
            f"{'false' if postgres else 0} FROM ({numbers(queued, history + 1, postgres)}) AS n"))
        session.execute(update(Campaign).where(Campaign.id == past).values(state="completed"))
    with db.session() as session:
        campaigns.launch(session, campaigns.get(session, "current"), now=NOW)
    if postgres:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) messages, contacts")
    else:
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")


def claims(db: Database, messages: int, batch: int, limit: int | None) -> float:
    """The median claim's µs a message; what it claimed is given back for the next round."""
    outbox = Outbox(db, f"limit-{limit}")
    with db.session() as session:
        running = campaigns.running(session, ["current"], NOW)
    per_message = []
    claimed = 0
    while claimed < messages:
        started = time.perf_counter()
        got = outbox.claim(running, batch, NOW, pair_interval=0.0, daily_unique_limit=limit)
        if not got:
            break
        per_message.append((time.perf_counter() - started) / len(got))
        claimed += len(got)
    with db.session() as session:
        session.execute(update(Contact).where(Contact.id.in_(
            select(Message.contact_id).where(Message.lease_owner == outbox.worker_id))).values(next_send_at=None))
        session.execute(update(Message).where(Message.lease_owner == outbox.worker_id)
                        .values(state="queued", lease_owner=None, lease_expires_at=None, kind=None,
                                business_initiated=False))
    return statistics.median(per_message) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--database", help="PostgreSQL URL, or a SQLite URL naming the file (default: temp SQLite files)")
    parser.add_argument("--per-day", type=int, default=100_000, help="business-initiated messages a day in the history")
    parser.add_argument("--limit", type=int, default=1_000_000, help="the messaging limit the second round claims with")
    parser.add_argument("--queued", type=int, default=20_000)
    parser.add_argument("--claim-messages", type=int, default=4_000)
    parser.add_argument("--claim-batch", type=int, default=160, help="a claim's size (80 MPS x 2 s)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for history in sorted(args.history):
            place = Place(args.database, history, folder)
            db = Database.open(place.url, migrate=False)
            try:
                started = time.perf_counter()
                build(db, history, args.queued, args.per_day)
                print(f"H={history:,}: built in {time.perf_counter() - started:.0f} s", flush=True)
                free = claims(db, args.claim_messages, args.claim_batch, None)
                limited = claims(db, args.claim_messages, args.claim_batch, args.limit)
                rows.append((history, free, limited))
                print(f"H={history:,}: {free:.0f} µs a message without a limit, {limited:.0f} with it", flush=True)
            finally:
                db.close()
                place.remove()
    label = "PostgreSQL" if args.database and args.database.startswith("postgresql") else "SQLite"
    print(f"\nClaim cost, µs a message ({label}; {args.per_day:,} business-initiated a day in the history, "
          f"claims of {args.claim_batch})")
    print(f"{'history':>12} {'no limit':>10} {'limit':>10}")
    for history, free, limited in rows:
        print(f"{history:>12,} {free:>10.1f} {limited:>10.1f}")
    if len(rows) > 1:
        print(f"{'ratio':>12} {rows[-1][1] / rows[0][1]:>10.2f} {rows[-1][2] / rows[0][2]:>10.2f}")


if __name__ == "__main__":
    main()
