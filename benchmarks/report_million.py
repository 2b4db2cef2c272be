"""Report benchmark: a 1,000,000-recipient campaign in final states, reported as CSV, parquet and xlsx.

Seeds a fresh SQLite database (the driver's own `executemany` in chunks, no ORM), then runs
each report in a child process, as `campaign report` would, and prints its wall time and
the child's peak RSS. The summary and the chart are timed too (not part of the target).

    python benchmarks/report_million.py [--rows 1000000] [--db PATH] [--formats csv,parquet,xlsx]

`--db PATH` keeps the seeded database (and reuses it when it exists), for profiling.
Targets (DESIGN.md): each report under 30 s wall and under 500 MB peak memory.
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
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaign import campaigns  # noqa: E402
from campaign.db import Database  # noqa: E402
from campaign.models import Import  # noqa: E402
from campaign.states import CampaignState  # noqa: E402

NAME = "million"
CHUNK = 50_000
START = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)
MPS = 80
# Final states of a realistic marketing send: most delivered or read, a few failed or skipped.
STATES = ["read", "delivered", "sent", "failed", "skipped"]
SHARES = [0.56, 0.34, 0.04, 0.05, 0.01]
FAILURES = [  # (code, title, share of the failures)
    (131026, "Message undeliverable", 0.55),
    (131049, "This message was not delivered to maintain healthy ecosystem engagement.", 0.30),
    (131050, "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages.", 0.10),
    (130472, "User's number is part of an experiment", 0.05),
]
NAMES = ["José", "Zoë", "Ana", "Björn", "Łukasz", "Chloé", "Siobhán", "Nguyễn", "Aïcha", "Ömer", "Priya", "Kwame"]
CITIES = ["München", "São Paulo", "Zürich", "Kraków", "Lyon", "Sevilla", "Lagos", "Pune", "Jakarta", "Austin"]


def _sqlite_times(seconds: np.ndarray, present: np.ndarray) -> list[str | None]:
    """Seconds after START as SQLAlchemy's SQLite DATETIME text (naive UTC, microseconds)."""
    base = np.datetime64(START.replace(tzinfo=None), "us")
    text = np.datetime_as_string(base + (seconds * 1e6).astype("timedelta64[us]"), unit="us")
    return [t.replace("T", " ") if p else None for t, p in zip(text.tolist(), present.tolist())]


def seed(path: Path, rows: int) -> None:
    """A completed campaign of `rows` recipients, one import, in final states."""
    db = Database.open(f"sqlite:///{path}")
    with db.session() as session:
        campaign = campaigns.create(session, campaigns.CampaignSpec(NAME, "order_update", "en_US", ["name", "order_id"]))
        campaign.state = CampaignState.COMPLETED
        record = Import(campaign_id=campaign.id, file="recipients.csv", rows=rows, imported=rows)
        session.add(record)
        session.flush()
        campaign_id, import_id = campaign.id, record.id
    db.close()

    rng = np.random.default_rng(7)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        index = np.arange(start, start + n)
        phones = [f"+49151{i:08d}" for i in index.tolist()]
        conn.executemany("INSERT INTO contacts (phone) VALUES (?)", [(p,) for p in phones])
        first_contact = conn.execute("SELECT id FROM contacts WHERE phone = ?", (phones[0],)).fetchone()[0]

        state = rng.choice(len(STATES), size=n, p=SHARES)
        sent = index / MPS + rng.uniform(0, 0.01, n)
        to_deliver = rng.lognormal(np.log(2.0), 0.6, n)
        to_read = rng.exponential(1800.0, n)
        has_sent = state != 4
        has_delivered = state <= 1
        has_read = state == 0
        has_failed = state == 3
        failure = rng.choice(len(FAILURES), size=n, p=[f[2] for f in FAILURES])
        attempts = np.where(has_sent, 1 + (rng.random(n) < 0.02), 0)
        sent_at = _sqlite_times(sent, has_sent)
        delivered_at = _sqlite_times(sent + to_deliver, has_delivered)
        read_at = _sqlite_times(sent + to_deliver + to_read, has_read)
        failed_at = _sqlite_times(sent + to_deliver, has_failed)
        queued_at = START.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        rows_out = []
        for k in range(n):
            i = start + k
            s = int(state[k])
            code, title = (FAILURES[failure[k]][0], FAILURES[failure[k]][1]) if s == 3 else (None, None)
            if s == 4:
                title = "window closed and no template"
            params = json.dumps({
                "name": NAMES[i % len(NAMES)], "phone": f"0151 {i:08d}", "city": CITIES[i % len(CITIES)],
                "order_id": f"A-{i:07d}", "amount": f"{(i % 9000) / 100 + 10:.2f}",
            }, ensure_ascii=False)
            wa_id = phones[k][1:] if has_sent[k] else None
            wamid = f"wamid.HBgNNDkxNTEyMzQ1Njc4FQIAERgS{i:012d}QUFBQUFBQQA=" if has_sent[k] else None
            rows_out.append((
                campaign_id, first_contact + k, import_id, i + 2, params, "template", STATES[s], int(attempts[k]),
                wamid, wa_id, code, title, None, "marketing" if has_delivered[k] else None,
                queued_at, sent_at[k], delivered_at[k], read_at[k], failed_at[k],
            ))
        conn.executemany(
            "INSERT INTO messages (campaign_id, contact_id, import_id, row_number, params, kind, state, attempts, "
            "wamid, wa_id, error_code, error_title, error_details, pricing_category, queued_at, sent_at, delivered_at, "
            "read_at, failed_at, business_initiated, pair_hits) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 0)",
            rows_out,
        )
        conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


_CHILD = """
import sys, time
from campaign.db import Database
from campaign import chart, export, render, summary
db = Database.open(sys.argv[1])
start = time.perf_counter()
{body}
print(f"{{time.perf_counter() - start:.2f}}")
"""
_REPORT = "result = export.write_report(db, 'million', sys.argv[2], fmt=sys.argv[3])"
_SUMMARY = "render.format_summary(summary.summary(db, 'million'))"
_CHART = "chart.write_chart(db, 'million', sys.argv[2])"


def measured(body: str, *args: str) -> tuple[float, float, float]:
    """(seconds inside the library call, seconds of the whole process, peak RSS in MB) of
    `body` run in a fresh process, as `campaign report` runs. `os.wait4` gives this child's
    own rusage, so each figure is one run's alone."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(body=body), *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    out, err = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(child.pid, 0)
    whole = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"the child failed:\n{err}")
    return float(out.strip().splitlines()[-1]), whole, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, help="keep the seeded database here (reused when it exists)")
    parser.add_argument("--formats", default="csv,parquet,xlsx")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = args.db or Path(folder) / "bench.db"
        if not path.exists():
            print(f"seeding {args.rows:,} recipients into {path} ...", flush=True)
            started = time.perf_counter()
            seed(path, args.rows)
            print(f"seeded in {time.perf_counter() - started:.1f} s ({path.stat().st_size / 1e6:.0f} MB)")
        url = f"sqlite:///{path}"
        print(f"{os.cpu_count()} cores; each run in a fresh process; peak = the process's maximum RSS")
        verdicts = []
        for fmt in args.formats.split(","):
            out = Path(folder) / f"report.{fmt}"
            inner, whole, peak = measured(_REPORT, url, str(out), fmt)
            ok = whole < 30 and peak < 500
            verdicts.append(ok)
            print(f"report {fmt:8} {inner:6.1f} s in write_report, {whole:6.1f} s whole process, "
                  f"peak {peak:5.0f} MB, file {out.stat().st_size / 1e6:6.1f} MB  {'OK' if ok else 'MISSED'}")
        inner, whole, peak = measured(_SUMMARY, url)
        print(f"summary         {inner:6.1f} s, peak {peak:5.0f} MB")
        inner, whole, peak = measured(_CHART, url, str(Path(folder) / "chart.png"))
        print(f"chart           {inner:6.1f} s, peak {peak:5.0f} MB")
        print("targets: under 30 s and under 500 MB per report:", "met" if all(verdicts) else "MISSED")


if __name__ == "__main__":
    main()
