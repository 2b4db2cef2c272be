"""`campaign estimate` on 1,000,000 queued messages of a marketing campaign, run as a user runs
it (the CLI, in its own process), without and with CAMPAIGN_MARKETING_FREQUENCY=2/7d.

    python benchmarks/estimate_million.py [--rows 1000000] [--db PATH]

History, so the frequency cap has something to count: an earlier marketing campaign sent
every recipient one template yesterday and another sent every third recipient a second
one, so with 2/7d a third of the recipients are past the cap. The database is written
straight with sqlite3 (seconds, not the minutes an import would take); `--db PATH` keeps it
for the next run. Target (issue 15): under 10 s on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from campaign import campaigns
from campaign.db import Database

CHUNK = 100_000


def seed(path: Path, rows: int, now: datetime) -> None:
    db = Database.open(f"sqlite:///{path}")
    with db.session() as session:
        ids = []
        for name in ("past-1", "past-2", "next"):
            c = campaigns.create(session, campaigns.CampaignSpec(name, "promo", "en_US", [], category="marketing"))
            session.flush()
            ids.append(c.id)
    db.close()
    yesterday = (now - timedelta(days=1)).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        conn.executemany("INSERT INTO contacts (id, phone) VALUES (?, ?)",
                         [(i + 1, f"+49151{i:08d}") for i in range(start, start + n)])
        conn.executemany(
            "INSERT INTO messages (campaign_id, contact_id, params, kind, state, attempts, queued_at, sending_at, sent_at,"
            " business_initiated, pair_hits, marketing_waits) VALUES (?, ?, '{}', 'template', 'delivered', 1, ?, ?, ?, 1, 0, 0)",
            [(ids[0], i + 1, yesterday, yesterday, yesterday) for i in range(start, start + n)]
            + [(ids[1], i + 1, yesterday, yesterday, yesterday) for i in range(start, start + n) if i % 3 == 0])
        conn.executemany(
            "INSERT INTO messages (campaign_id, contact_id, params, state, attempts, queued_at, business_initiated,"
            " pair_hits, marketing_waits) VALUES (?, ?, '{}', 'queued', 0, ?, 0, 0, 0)",
            [(ids[2], i + 1, yesterday) for i in range(start, start + n)])
        conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, help="keep the database here (and reuse it when it exists)")
    args = parser.parse_args()
    now = datetime.now(timezone.utc)
    path = args.db or Path(tempfile.mkdtemp(), "estimate.db")
    if not path.exists():
        start = time.perf_counter()
        seed(path, args.rows, now)
        print(f"seeded {args.rows:,} recipients in {time.perf_counter() - start:.1f} s")
    for label, cap in (("no cap", None), ("2/7d", "2/7d")) * 2:
        env = {**os.environ, "CAMPAIGN_DATABASE_URL": f"sqlite:///{path}"}
        env.pop("CAMPAIGN_MARKETING_FREQUENCY", None)
        if cap:
            env["CAMPAIGN_MARKETING_FREQUENCY"] = cap
        start = time.perf_counter()
        answer = subprocess.run([sys.executable, "-m", "campaign", "estimate", "next", "--json"], env=env,
                                capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        figures = json.loads(answer.stdout)
        print(f"  {label:8} {wall:5.2f} s wall  messages {figures.get('total', figures.get('messages'))}  "
              f"skipped {figures.get('skipped')}")


if __name__ == "__main__":
    main()
