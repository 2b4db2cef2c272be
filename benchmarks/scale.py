"""Scale benchmark: the per-message costs of one campaign at several sizes, side by side.

For each N it builds a campaign of N recipients on a fresh database and measures, each phase
in its own child process (so each peak memory is that phase's alone):

- import: a generated N-row CSV (cached in benchmarks/out/) through the real importer
  (`importer.import_file`, its normalizing workers included); rows/s and µs a row.
- claim: `Outbox.claim` straight, with the campaign as `campaigns.running` returns it, timed
  over `--claim-messages` messages in claims of `--claim-batch` (the median claim's cost a
  message, robust to a neighbour's burst; the first claim apart), with 0%, 50% and 99% of
  the campaign drained. Draining is one UPDATE that marks the first messages in id order
  `sent` with a wamid, as business-initiated templates (what sending a campaign's first
  contact leaves: they are in the messaging limit's index too), not sending; on PostgreSQL
  it is followed by `VACUUM (ANALYZE)`, the steady state autovacuum keeps (`--no-vacuum`:
  the claims right after, through every dead index entry the drain left, as between two
  autovacuums).
- reconcile: `--statuses` synthetic status webhooks (50 a body, as Meta batches them, each
  with the outbox id in `biz_opaque_callback_data`), stored with `webhooks.store_event`, then
  applied by one `reconcile.reconcile_once`; µs a status for each. Twice: `delivered` for
  the latest sends (a run of neighbouring ids: statuses follow sends within seconds), and
  `read` for messages spread over the whole campaign (reads come later, from anywhere).
  On PostgreSQL also the WAL each status wrote: the pages it dirtied, as the first change
  of a page after a checkpoint logs the whole 8 kB page.
- report: `export.write_report` to CSV, µs a row.
- size: PostgreSQL: the benchmark schema's tables, indexes and TOAST
  (`pg_total_relation_size`; `pg_database_size` would count whatever else shares the
  database); SQLite: the file and its WAL. Bytes a recipient.

It prints one table, a column per N and the ratio of the largest N to the smallest, with
`!` where a per-message cost or a peak grew more than 1.5x (the target: costs and memory
flat from 100k to 10M on PostgreSQL, 2M on SQLite). `--explain` also prints where a claim's
time goes at 99% drained (µs a message by statement, and the commits) and the plan of the
claim's own statement there (PostgreSQL `EXPLAIN (ANALYZE, BUFFERS)`, run and rolled back
after the timed claims were given back; SQLite `EXPLAIN QUERY PLAN`).

    python benchmarks/scale.py --recipients 100000 1000000 2000000 --explain   # SQLite: ~2.5 min
    python benchmarks/scale.py --recipients 100000 2000000 --database sqlite:////tmp/scale.db
    python benchmarks/scale.py --recipients 100000 1000000 --no-vacuum --explain \\
        --database postgresql+psycopg://postgres@127.0.0.1:5432/test            # ~2 min
    python benchmarks/scale.py --recipients 100000 10000000 --explain \\
        --database postgresql+psycopg://postgres@127.0.0.1:5432/test            # ~26 min, 8 GB

On this 2-core machine N=1M takes about 1 minute on either database. 10M on PostgreSQL 15
takes about 26 minutes with its default 128 MB shared_buffers (19 of them importing), and
16-17 minutes (12 importing) with shared_buffers = 6GB, which also keeps the claim's cost
flat (see the README's scaling notes).

A SQLite URL names a file per N (`/tmp/scale-100000.db`); on PostgreSQL each N gets its own
schema (`scale_N_PID`). Both are removed at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import String, cast, create_engine, event, func, literal, select, text, update  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from campaign import campaigns, export  # noqa: E402
from campaign.db import Database  # noqa: E402
from campaign.importer import ImportOptions, import_file  # noqa: E402
from campaign.models import Campaign, Contact, Message  # noqa: E402
from campaign.outbox import Outbox  # noqa: E402
from campaign.reconcile import reconcile_once  # noqa: E402
from campaign.statuses import callback_data  # noqa: E402
from campaign.webhooks import store_event  # noqa: E402

OUT = Path(__file__).parent / "out"
NAME = "scale"
NOW = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)
"""Every phase's clock: the claims, the drain and the statuses agree on it."""
DRAINED = (0.0, 0.5, 0.99)
PER_BODY = 50
TARGET = 1.5


# -- the recipients file -------------------------------------------------------------------------


def recipients_csv(rows: int) -> Path:
    """`phone,name,order_id`: German mobile numbers, all distinct and valid, in the three
    spellings users send (E.164, international with spaces, national for region DE), in no
    order: a file sorted by number would make every index insert an append, which no real
    list does (row i gets number (i * 48271 + 12345) mod 10^8, a permutation)."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"scale-{rows}.csv"
    if path.exists():
        return path
    names = ["José", "Zoë", "Ana", "Björn", "Łukasz", "Chloé", "Siobhán", "Nguyễn", "Aïcha", "Ömer"]
    temp = path.with_suffix(".partial")
    with temp.open("w", encoding="utf-8") as handle:
        handle.write("phone,name,order_id\n")
        for start in range(0, rows, 100_000):
            lines = []
            for i in range(start, min(rows, start + 100_000)):
                digits = f"{(i * 48_271 + 12_345) % 10 ** 8:08d}"
                spelling = i % 3
                number = (f"+49151{digits}" if spelling == 0 else f"+49 151 {digits}" if spelling == 1
                          else f"0151 {digits[:4]} {digits[4:]}")
                lines.append(f"{number},{names[i % len(names)]},A-{i:08d}\n")
            handle.write("".join(lines))
    temp.rename(path)
    return path


# -- the phases (each runs in a child process: `--phase NAME`) ------------------------------------


def phase_import(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    path = recipients_csv(args.n)
    with db.session() as session:
        campaigns.create(session, campaigns.CampaignSpec(NAME, "order_update", "en_US", ["name", "order_id"]))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = import_file(db, NAME, path, ImportOptions(default_region="DE", rejects_path=Path(folder) / "rejects.csv"),
                             now=NOW)
        seconds = time.perf_counter() - started
    with db.session() as session:
        campaigns.launch(session, campaigns.get(session, NAME), now=NOW)
    return {"seconds": seconds, "imported": result.imported, "rejected": result.rejected}


def phase_drain(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    """Marks the first `args.drained` of the campaign's messages (id order) sent, as sending
    would have left them; the claims of earlier phases are among them."""
    with db.session() as session:
        campaign_id = session.scalar(select(Campaign.id).where(Campaign.name == NAME))
        first, total = session.execute(
            select(func.min(Message.id), func.count()).where(Message.campaign_id == campaign_id)).one()
    cut = first + int(total * args.drained)
    started = time.perf_counter()
    with db.session() as session:
        session.execute(
            update(Message)
            .where(Message.campaign_id == campaign_id, Message.id < cut, Message.state.in_(["queued", "sending"]))
            .values(state="sent", wamid=literal("wamid.scale.") + cast(Message.id, String), sent_at=NOW, attempts=1,
                    lease_owner=None, lease_expires_at=None, kind="template", business_initiated=True)
        )
    seconds = time.perf_counter() - started
    if db.engine.dialect.name == "postgresql" and not args.no_vacuum:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) messages, contacts")
    return {"seconds": seconds, "vacuum": time.perf_counter() - started - seconds}


def phase_claim(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    outbox = Outbox(db, f"scale-{os.getpid()}")
    with db.session() as session:
        running = campaigns.running(session, [NAME], NOW)
    statements: list[tuple[str, Any]] = []
    spent: dict[str, float] = {}  # seconds by statement (its first words), and commits

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE MESSAGES") and "RETURNING" in statement.upper():
            statements.append((statement, parameters))
        conn.info["scale_started"] = time.perf_counter()

    def took(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        words = " ".join(statement.split()[:4])
        key = "UPDATE messages (the claim)" if "RETURNING" in statement.upper() and "messages" in words else words[:32]
        spent[key] = spent.get(key, 0.0) + time.perf_counter() - conn.info.pop("scale_started", time.perf_counter())

    def committed(session: Any) -> None:
        started = session.info.pop("scale_commit", None)
        if started is not None:
            spent["COMMIT"] = spent.get("COMMIT", 0.0) + time.perf_counter() - started

    def before_commit(session: Any) -> None:
        session.info["scale_commit"] = time.perf_counter()

    event.listen(db.engine, "before_cursor_execute", keep)
    event.listen(db.engine, "after_cursor_execute", took)
    event.listen(Session, "before_commit", before_commit)
    event.listen(Session, "after_commit", committed)
    claimed = 0
    timings = []
    per_message = []
    while claimed < args.claim_messages:
        started = time.perf_counter()
        got = outbox.claim(running, min(args.claim_batch, args.claim_messages - claimed), NOW, pair_interval=0.0)
        timings.append(time.perf_counter() - started)
        if not got:
            break
        claimed += len(got)
        per_message.append(timings[-1] / len(got))
    event.remove(db.engine, "before_cursor_execute", keep)
    event.remove(db.engine, "after_cursor_execute", took)
    event.remove(Session, "before_commit", before_commit)
    event.remove(Session, "after_commit", committed)
    result: dict[str, Any] = {"seconds": sum(timings), "claimed": claimed, "first": timings[0],
                              "median_per_message": statistics.median(per_message) if per_message else 0.0,
                              "spent": {k: v / max(claimed, 1) for k, v in spent.items()}}
    if args.explain and statements:
        # The claims above took what they found: give it back, so the plan is of this claim.
        with db.session() as session:
            session.execute(update(Contact).where(Contact.id.in_(
                select(Message.contact_id).where(Message.lease_owner == outbox.worker_id))).values(next_send_at=None))
            session.execute(update(Message).where(Message.lease_owner == outbox.worker_id)
                            .values(state="queued", lease_owner=None, lease_expires_at=None))
        result["plan"] = _explain(db, *statements[0])
    return result


def _explain(db: Database, statement: str, parameters: Any) -> str:
    """The plan of the claim's own statement (as SQLAlchemy sent it), on PostgreSQL with the
    statement run (and rolled back) for its real row counts and buffers."""
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        if db.engine.dialect.name == "postgresql":
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            lines = [row[0] for row in cursor.fetchall()]
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            lines = [f"{'  ' * (row[1] > 0)}{row[3]}" for row in cursor.fetchall()]
        raw.rollback()
    finally:
        raw.close()
    return "\n".join(lines)


def phase_reconcile(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    """Two rounds of `args.statuses` statuses each: `delivered` for the latest sends (a
    contiguous run of ids, as statuses follow sends within seconds), then `read` for messages
    spread over the whole campaign (reads come hours or days later, from anywhere)."""
    with db.read_session() as session:
        campaign_id = session.scalar(select(Campaign.id).where(Campaign.name == NAME))
        first, last = session.execute(
            select(func.min(Message.id), func.max(Message.id))
            .where(Message.campaign_id == campaign_id, Message.state == "sent")).one()
    size = min(args.statuses, (last - first + 1) // 2)
    recent = list(range(last - size + 1, last + 1))
    spread = sorted(random.Random(args.n).sample(range(first, last - size + 1), size))
    result: dict[str, Any] = {"statuses": size}
    for label, ids, word, seconds in (("recent", recent, "delivered", 5), ("spread", spread, "read", 3600)):
        bodies = _status_bodies(db, ids, word, int((NOW + timedelta(seconds=seconds)).timestamp()))
        started = time.perf_counter()
        for body in bodies:
            store_event(db, body, received_at=NOW)
        result[f"{label}_store_seconds"] = time.perf_counter() - started
        wal = _wal_position(db)
        started = time.perf_counter()
        stats = reconcile_once(db, now=NOW + timedelta(seconds=seconds + 1))
        result[f"{label}_seconds"] = time.perf_counter() - started
        after = _wal_position(db)
        if wal is not None and after is not None:
            result[f"{label}_wal_bytes"] = after - wal
        assert stats.statuses_applied == size, stats
    return result


def _wal_position(db: Database) -> int | None:
    """Bytes of WAL the PostgreSQL cluster has written so far (None on SQLite): what a
    reconcile writes tells how many pages it dirtied, as the first change of a page after a
    checkpoint logs the whole 8 kB page."""
    if db.engine.dialect.name != "postgresql":
        return None
    with db.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").scalar_one())


def _status_bodies(db: Database, ids: list[int], word: str, at: int) -> list[bytes]:
    """Meta's status webhooks for messages `ids` (sent by the drain), 50 statuses a body."""
    wa_ids: dict[int, str] = {}
    with db.read_session() as session:
        for start in range(0, len(ids), 5_000):
            wa_ids.update((i, phone[1:]) for i, phone in session.execute(
                select(Message.id, Contact.phone).join(Contact, Contact.id == Message.contact_id)
                .where(Message.id.in_(ids[start:start + 5_000]))))
    bodies = []
    for start in range(0, len(ids), PER_BODY):
        statuses = [{"id": f"wamid.scale.{i}", "status": word, "timestamp": str(at), "recipient_id": wa_ids[i],
                     "biz_opaque_callback_data": callback_data(i),
                     "pricing": {"billable": True, "pricing_model": "PMP", "category": "marketing"}}
                    for i in ids[start:start + PER_BODY]]
        value = {"messaging_product": "whatsapp",
                 "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1001"}, "statuses": statuses}
        bodies.append(json.dumps({"object": "whatsapp_business_account",
                                  "entry": [{"id": "waba", "changes": [{"field": "messages", "value": value}]}]}).encode())
    return bodies


def phase_report(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = export.write_report(db, NAME, Path(folder) / "report.csv")
        return {"seconds": time.perf_counter() - started, "rows": result.rows}


PHASES = {"import": phase_import, "drain": phase_drain, "claim": phase_claim, "reconcile": phase_reconcile,
          "report": phase_report}


def child_main(args: argparse.Namespace) -> None:
    db = Database.open(args.url, migrate=False)
    db.upgrade()  # a no-op, unless the code moved on during a long run (a new migration)
    try:
        result = PHASES[args.phase](db, args)
    finally:
        db.close()
    result["self_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["children_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))


def run_phase(phase: str, url: str, n: int, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """`phase` in a fresh process; its JSON result with `wall` and `tree_peak_mb` (the
    largest process of the phase: the importer's workers are the child's children)."""
    command = [sys.executable, __file__, "--phase", phase, "--url", url, "--n", str(n),
               "--claim-messages", str(args.claim_messages), "--claim-batch", str(args.claim_batch),
               "--statuses", str(args.statuses)]
    if args.explain:
        command.append("--explain")
    if args.no_vacuum:
        command.append("--no-vacuum")
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=ROOT)
        out = child.stdout.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, its workers included
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            errors.seek(0)
            raise SystemExit(f"phase {phase} (N={n:,}) failed:\n{errors.read()}")
    result = json.loads(out.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - started
    result["tree_peak_mb"] = usage.ru_maxrss / 1024
    return result


# -- databases -----------------------------------------------------------------------------------


class Place:
    """A fresh database for one N: a SQLite file, or a PostgreSQL schema."""

    def __init__(self, base: str | None, n: int, folder: str) -> None:
        self.postgres = bool(base and base.startswith("postgresql"))
        if self.postgres:
            assert base is not None
            self.base = base
            self.schema = f"scale_{n}_{os.getpid()}_{uuid.uuid4().hex[:4]}"
            admin = create_engine(base, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f"CREATE SCHEMA {self.schema}"))
            admin.dispose()
            self.url = make_url(base).update_query_dict({"options": f"-csearch_path={self.schema}"}).render_as_string(
                hide_password=False)
            Database.open(self.url, migrate=False).upgrade()
        else:
            if base:
                path = Path(make_url(base).database or "scale.db")
                self.path = path.with_name(f"{path.stem}-{n}{path.suffix or '.db'}")
            else:
                self.path = Path(folder) / f"scale-{n}.db"
            for leftover in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                leftover.unlink(missing_ok=True)
            self.url = f"sqlite:///{self.path}"
            Database.open(self.url).close()  # created and migrated

    def size(self) -> int:
        if self.postgres:
            engine = create_engine(self.base)
            with engine.connect() as conn:
                size = conn.execute(text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :schema AND c.relkind IN ('r', 'm')"
                ), {"schema": self.schema}).scalar_one()
            engine.dispose()
            return int(size)
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def remove(self) -> None:
        if self.postgres:
            engine = create_engine(self.base, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(text(f"DROP SCHEMA {self.schema} CASCADE"))
            engine.dispose()
        else:
            for path in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                path.unlink(missing_ok=True)


# -- one N, and the table ------------------------------------------------------------------------


def measure(n: int, args: argparse.Namespace, folder: str) -> dict[str, Any]:
    started = time.perf_counter()
    print(f"N={n:,}: generating the file ...", flush=True)
    recipients_csv(n)
    place = Place(args.database, n, folder)
    figures: dict[str, Any] = {"n": n}
    try:
        done = run_phase("import", place.url, n, args)
        figures["import"] = done
        print(f"N={n:,}: imported {done['imported']:,} in {done['seconds']:.1f} s", flush=True)
        for drained in DRAINED:
            if drained:
                figures[f"drain{drained}"] = run_phase("drain", place.url, n, args, drained=drained)
            figures[f"claim{drained}"] = run_phase("claim", place.url, n, args)
            print(f"N={n:,}: claimed at {drained:.0%} drained", flush=True)
        figures["reconcile"] = run_phase("reconcile", place.url, n, args)
        figures["report"] = run_phase("report", place.url, n, args)
        figures["size"] = place.size()
    finally:
        if not args.keep:
            place.remove()
        else:
            print(f"N={n:,}: kept at {place.url}")
    figures["minutes"] = (time.perf_counter() - started) / 60
    print(f"N={n:,}: done in {figures['minutes']:.1f} min", flush=True)
    return figures


def rows_of(f: dict[str, Any]) -> list[tuple[str, float, bool]]:
    """(label, value, is a cost that should stay flat)."""
    rows = [
        ("import rows/s", f["import"]["imported"] / f["import"]["seconds"], False),
        ("import µs/row", f["import"]["seconds"] / f["import"]["imported"] * 1e6, True),
    ]
    for drained in DRAINED:
        claim = f[f"claim{drained}"]
        rows.append((f"claim µs/msg at {drained:.0%} drained", claim["median_per_message"] * 1e6, True))
    for drained in DRAINED:
        claim = f[f"claim{drained}"]
        rows.append((f"  first claim ms at {drained:.0%}", claim["first"] * 1e3, False))
    for drained in DRAINED[1:]:
        rows.append((f"  drain UPDATE to {drained:.0%}, s", f[f"drain{drained}"]["seconds"], False))
    rec = f["reconcile"]
    for label in ("recent", "spread"):
        rows += [
            (f"store µs/status, {label}", rec[f"{label}_store_seconds"] / rec["statuses"] * 1e6, True),
            (f"reconcile µs/status, {label}", rec[f"{label}_seconds"] / rec["statuses"] * 1e6, True),
            (f"reconcile statuses/s, {label}", rec["statuses"] / rec[f"{label}_seconds"], False),
        ]
        if f"{label}_wal_bytes" in rec:
            rows.append((f"  WAL bytes/status, {label}", rec[f"{label}_wal_bytes"] / rec["statuses"], False))
    rows += [
        ("report µs/row", f["report"]["seconds"] / f["report"]["rows"] * 1e6, True),
        ("report s", f["report"]["seconds"], False),
        ("database bytes/recipient", f["size"] / f["import"]["imported"], True),
        ("database MB", f["size"] / 1e6, False),
    ]
    for phase in ("import", "claim0.0", "claim0.99", "reconcile", "report"):
        rows.append((f"peak MB {phase.replace('0.0', ' 0%').replace('0.99', ' 99%')}", f[phase]["self_peak_mb"], True))
    rows.append(("peak MB import, largest worker", f["import"]["children_peak_mb"], True))
    return rows


def print_table(all_figures: list[dict[str, Any]], label: str) -> None:
    print()
    print(f"{label}; {os.cpu_count()} cores; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ns = [f["n"] for f in all_figures]
    tables = [rows_of(f) for f in all_figures]
    width = 34
    print(f"{'':{width}}" + "".join(f"{n:>14,}" for n in ns) + (f"{'ratio':>9}" if len(ns) > 1 else ""))
    for i, (name, _, flat) in enumerate(tables[0]):
        values = [t[i][1] for t in tables]
        line = f"{name:{width}}" + "".join(f"{v:>14,.1f}" for v in values)
        if len(ns) > 1 and values[0]:
            ratio = values[-1] / values[0]
            line += f"{ratio:>8.2f}x" + (" !" if flat and ratio > TARGET else "")
        print(line)
    print("minutes per N: " + ", ".join(f"{f['n']:,}: {f['minutes']:.1f}" for f in all_figures))
    if any(f["claim0.99"].get("plan") for f in all_figures):
        print("\nwhere a claim's time goes at 99% drained, µs a message (all claims, the first included):")
        names = sorted({k for f in all_figures for k in f["claim0.99"]["spent"]},
                       key=lambda k: -all_figures[-1]["claim0.99"]["spent"].get(k, 0.0))
        for name in names:
            print(f"  {name:{width - 2}}" + "".join(f"{f['claim0.99']['spent'].get(name, 0.0) * 1e6:>14,.1f}"
                                                   for f in all_figures))
    for f in all_figures:
        plan = f["claim0.99"].get("plan")
        if plan:
            print(f"\nclaim at 99% drained, N={f['n']:,}:\n{plan}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--database", help="PostgreSQL URL, or a SQLite URL naming the file (default: temp SQLite files)")
    parser.add_argument("--claim-messages", type=int, default=1_000)
    parser.add_argument("--claim-batch", type=int, default=100)
    parser.add_argument("--statuses", type=int, default=10_000)
    parser.add_argument("--explain", action="store_true", help="print the claim's plan at 99%% drained")
    parser.add_argument("--keep", action="store_true", help="keep each N's database")
    parser.add_argument("--no-vacuum", action="store_true",
                        help="PostgreSQL: claim right after the drain UPDATE, its dead index entries not vacuumed")
    # A phase in a child process:
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--drained", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        child_main(args)
        return
    label = "PostgreSQL" if args.database and args.database.startswith("postgresql") else "SQLite"
    label += ", no VACUUM after the drain" if args.no_vacuum and label == "PostgreSQL" else ""
    with tempfile.TemporaryDirectory() as folder:
        all_figures = [measure(n, args, folder) for n in sorted(args.recipients)]
    print_table(all_figures, label)


if __name__ == "__main__":
    main()
