"""What a killed worker leaves in doubt: SIGKILL a worker mid-campaign, several times, and count.

    python benchmarks/crash_doubt.py                              # 80 MPS, 3 kills, SQLite
    python benchmarks/crash_doubt.py --mps 1000 --messages 20000 --database postgresql+psycopg://postgres@127.0.0.1:5432/test

A message marked in flight when its worker dies waits CAMPAIGN_SEND_GRACE (10 minutes) for a
status webhook before it may be sent again; one that was only claimed goes back to the
queue when its lease expires. The sandbox posts no webhooks here, so after the kills every
marked message is still in doubt: the script prints how many, and how many of them had
really reached the sandbox (the only ones that needed to wait). Then a last worker (with a
short grace) finishes the campaign, and the sandbox's ledger says whether anyone got two.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from sqlalchemy import func, select, update

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from dispatch_helpers import SENDER, TOKEN, fresh_database, phones, sandbox_process, seed  # noqa: E402

from campaign.models import Message  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--mps", type=int, default=80)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--latency", default="150-250", help="the sandbox's answer latency, ms")
    parser.add_argument("--database", help="a database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database or f"sqlite:///{folder}/crash.db"
        db = fresh_database(url)
        campaign_id = seed(db, "crash", phones(args.messages), template="hello_world", params=())
        low, high = (float(x) for x in args.latency.split("-"))
        with sandbox_process(Path(folder), mps=max(args.mps, 80) * 2, pair_interval=0,
                             latency_ms=[low, high]) as sandbox:
            base = sandbox.url
            env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "WA_API_BASE_URL": base, "WA_ACCESS_TOKEN": TOKEN,
                   "WA_PHONE_NUMBER_ID": SENDER, "CAMPAIGN_MPS": str(args.mps), "CAMPAIGN_PAIR_INTERVAL": "0"}
            for kill in range(args.kills):
                before = _accepted(base)
                worker = subprocess.Popen([sys.executable, "-m", "campaign", "worker", "--exit-when-idle"], env=env,
                                          stdout=subprocess.DEVNULL)
                while _accepted(base) < before + args.mps * 2 and worker.poll() is None:
                    time.sleep(0.05)
                time.sleep(0.137 * (kill + 1))  # anywhere in a block
                worker.send_signal(signal.SIGKILL)
                worker.wait()
            time.sleep(1)  # the sandbox answers what was in flight
            ledger = httpx.get(f"{base}/_sandbox/ledger", params={"phone_number_id": SENDER}, timeout=30).json()
            entries = ledger["entries"] if isinstance(ledger, dict) else ledger
            reached = {e["callback_data"] for e in entries if e.get("outcome") == "accepted" and e.get("callback_data")}
            with db.read_session() as session:
                doubt = [f"m{m}" for m in session.scalars(select(Message.id).where(
                    Message.campaign_id == campaign_id, Message.state == "sending", Message.sending_at.is_not(None)))]
                sent = session.scalar(select(func.count()).select_from(Message).where(
                    Message.campaign_id == campaign_id, Message.state == "sent")) or 0
            left = sum(1 for d in doubt if d in reached)
            print(f"{args.kills} SIGKILLs at {args.mps} MPS ({db.engine.url.get_backend_name()}): sent {sent}, "
                  f"in doubt {len(doubt)} (of which {left} had reached the sandbox, {len(doubt) - left} never left)")
            # The benchmark posts no webhooks: let every in-doubt message's wait end now (each
            # keeps the wait it was marked with, so a shorter CAMPAIGN_SEND_GRACE for the last
            # worker would not shorten it: that is what made this step wait ten minutes).
            with db.session() as session:
                session.execute(update(Message).where(Message.campaign_id == campaign_id, Message.state == "sending",
                                                      Message.sending_at.is_not(None))
                                .values(in_doubt_until=datetime.now(timezone.utc)))
            subprocess.run([sys.executable, "-m", "campaign", "worker", "--exit-when-idle"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            figures = httpx.get(f"{base}/_sandbox/figures", params={"phone_number_id": SENDER}).json()
            print(f"finished: accepted {figures['accepted']} of {args.messages}, duplicate sends "
                  f"{figures['duplicate_sends']} (the in-doubt ones that had left were sent again: no webhook here)")
        db.close()


def _accepted(base: str) -> int:
    return httpx.get(f"{base}/_sandbox/figures", params={"phone_number_id": SENDER}).json()["accepted"]


if __name__ == "__main__":
    main()
