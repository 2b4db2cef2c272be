"""Webhook statuses received, stored and reconciled per second, end to end, on SQLite.

DESIGN.md's figure: at least 2,000 status events per second received, stored and reconciled
on SQLite on this machine; Meta expects a median answer under 250 ms. This seeds a fresh
SQLite file with N messages with known wamids, starts the receiver (`campaign.webhooks.serve`,
its reconciler included) with uvicorn in a subprocess on a free loopback port, and fires
signed bodies of 50 statuses each (`sent`, `delivered`, `read` for every wamid, partly out
of order) from several concurrent asyncio + httpx clients. It prints the statuses stored
and reconciled per second from the first POST until the reconciler has applied them all
(polling the database), the receiver's median and 99th-percentile answer times, and the
server's CPU.

    .venv/bin/python benchmarks/webhooks_throughput.py [--messages 20000] [--per-body 50] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from measure import free_port, process_cpu_seconds  # noqa: E402
from sqlalchemy import func, insert, select

from campaign.db import Database
from campaign.models import Campaign, Contact, Message, WebhookEvent
from campaign.states import CampaignState, MessageState
from campaign.webhooks import signature

SECRET = "bench-app-secret"
T0 = 1772366400




def seed(db: Database, n: int) -> list[str]:
    wamids = [f"wamid.HBgLbench{i:08d}VAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA" for i in range(n)]
    sent_at = datetime.fromtimestamp(T0, tz=timezone.utc)
    with db.session() as session:
        campaign = Campaign(name="bench", state=CampaignState.RUNNING, template_name="hello_world",
                            template_language="en_US", param_columns=[])
        session.add(campaign)
        session.flush()
        session.execute(insert(Contact), [{"phone": f"+4915{i:09d}"} for i in range(n)])
        contact_ids = session.scalars(select(Contact.id).order_by(Contact.id)).all()
        session.execute(insert(Message), [
            {"campaign_id": campaign.id, "contact_id": cid, "state": MessageState.SENT.value, "wamid": w,
             "sent_at": sent_at, "params": {}}
            for cid, w in zip(contact_ids, wamids)
        ])
    return wamids


def status_bodies(wamids: list[str], per_body: int, rng: random.Random) -> list[bytes]:
    """sent, delivered and read for every wamid, in Meta's rough order with some disorder."""
    items = []
    for i, wamid in enumerate(wamids):
        for phase, word in enumerate(("sent", "delivered", "read")):
            ts = T0 + i // 200 + phase * 5
            items.append((ts + rng.random() * 8, {"id": wamid, "status": word, "timestamp": str(ts),
                                                  "recipient_id": "4915123456789",
                                                  "pricing": {"billable": True, "pricing_model": "PMP",
                                                              "category": "marketing"}}))
    items.sort(key=lambda pair: pair[0])
    bodies = []
    for start in range(0, len(items), per_body):
        value = {"messaging_product": "whatsapp",
                 "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1001"},
                 "statuses": [item for _, item in items[start:start + per_body]]}
        bodies.append(json.dumps({"object": "whatsapp_business_account",
                                  "entry": [{"id": "waba", "changes": [{"field": "messages", "value": value}]}]},
                                 separators=(",", ":")).encode())
    return bodies


async def fire(url: str, bodies: list[bytes], clients: int) -> tuple[list[float], int]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0)) as client:
        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                body = queue.get_nowait()
                headers = {"X-Hub-Signature-256": signature(SECRET, body), "Content-Type": "application/json"}
                started = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, failures


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--per-body", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="webhooks-bench-"))
    url = f"sqlite:///{folder / 'bench.db'}"
    db = Database.open(url)
    wamids = seed(db, args.messages)
    bodies = status_bodies(wamids, args.per_body, random.Random(1))
    statuses = 3 * len(wamids)

    port = free_port()
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "WA_APP_SECRET": SECRET, "WA_VERIFY_TOKEN": "bench"}
    server = subprocess.Popen(
        [sys.executable, "-c", "from campaign.config import load_settings; from campaign.webhooks import serve; "
                               f"serve(load_settings(dotenv_path=None), port={port})"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print(server.stderr.read() if server.stderr else "", file=sys.stderr)
                raise SystemExit("the receiver did not start")
            time.sleep(0.05)

        cpu_before = process_cpu_seconds(server.pid)
        started = time.perf_counter()
        latencies, failures = asyncio.run(fire(f"http://127.0.0.1:{port}/webhook", bodies, args.clients))
        answered = time.perf_counter() - started
        while True:
            with db.read_session() as session:
                left = session.scalar(select(func.count()).select_from(WebhookEvent)
                                      .where(WebhookEvent.processed_at.is_(None)))
            if not left:
                break
            if time.perf_counter() - started > 600:
                raise SystemExit(f"the reconciler left {left} events unprocessed")
            time.sleep(0.02)
        finished = time.perf_counter() - started
        cpu = process_cpu_seconds(server.pid) - cpu_before
        with db.read_session() as session:
            states = dict(session.execute(select(Message.state, func.count()).group_by(Message.state)).all())
            errors = session.scalar(select(func.count()).select_from(WebhookEvent).where(WebhookEvent.error.is_not(None)))
    finally:
        server.terminate()
        server.wait(timeout=15)
        db.close()
        shutil.rmtree(folder, ignore_errors=True)

    print(f"messages {len(wamids)}, statuses {statuses} in {len(bodies)} bodies of {args.per_body}, "
          f"{args.clients} concurrent clients, SQLite")
    print(f"received and stored: {statuses / answered:,.0f} statuses/s ({len(bodies) / answered:,.0f} bodies/s), "
          f"all answered in {answered:.2f} s, non-200 answers: {failures}")
    print(f"end to end (first POST until all reconciled): {statuses / finished:,.0f} statuses/s in {finished:.2f} s "
          f"(reconciler finished {finished - answered:.2f} s after the last answer)")
    print(f"answer time: median {statistics.median(latencies) * 1000:.1f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    print(f"server CPU: {cpu:.2f} s ({cpu / statuses * 1e6:.0f} µs per status)")
    print(f"final message states: {states}; events with errors: {errors}")
    ok = states.get("read", 0) == len(wamids) and not failures and not errors
    if not ok:
        print("FAILED: not every message ended read", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
