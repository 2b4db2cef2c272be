"""Soak: a long campaign against the sandbox with the faults production brings, on a schedule.

    python benchmarks/soak.py                           # 100,000 messages at 80 MPS (about 22 minutes)
    python benchmarks/soak.py --messages 6000 --mps 80  # a short one

Everything runs as real processes on a private PostgreSQL cluster (started in a temporary
folder, never the shared server): the sandbox posting status webhooks (1% of sends answered
500/503 although sent, 1% answered 5xx and not sent), `campaign webhooks`, and two
`campaign worker`s. On the way, at fixed shares of the ideal time (messages / cap): a worker
is killed (SIGKILL) and replaced at 20% and 70%, the receiver is killed and restarted at 35%,
and the database is stopped for 10 s at 50%.

Prints: duplicates and missing recipients (the sandbox's ledger), messages whose state does
not agree with the sandbox at the end (unresolved), the time to finish against the ideal,
the sustained rate, and the largest number of requests in any sliding second.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from dispatch_helpers import SENDER, phones, sandbox_process, seed  # noqa: E402
from outage_helpers import SECRET, Receiver, disagreements, private_cluster, sandbox_truth, worker  # noqa: E402

from campaign.db import Database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--mps", type=int, default=80)
    args = parser.parse_args()
    ideal = args.messages / args.mps
    folder = Path(tempfile.mkdtemp(prefix="campaign-soak-"))
    with private_cluster() as cluster:
        url = cluster.url
        Database.open(url, migrate=False).upgrade()
        db = Database.open(url)
        campaign_id = seed(db, "soak", phones(args.messages), template="hello_world", params=())
        receiver = Receiver(url, folder)
        receiver.start()
        config = {"mps": args.mps, "pair_interval": 0, "latency_ms": [100, 250], "webhook_url": f"{receiver.url}/webhook",
                  "app_secret": SECRET, "transient_rate": 0.02, "transient_sent_fraction": 0.5,
                  "sent_delay_ms": [100, 1000], "delivered_delay_ms": [500, 3000], "read_fraction": 0.5,
                  "read_delay_ms": [1000, 5000], "seed": 2026}
        with sandbox_process(folder, **config) as sandbox:
            env = {"CAMPAIGN_SEND_GRACE": "120", "CAMPAIGN_SERVER_ERROR_GRACE": "30", "CAMPAIGN_LEASE": "15"}
            workers = [worker(url, sandbox.url, folder, mps=args.mps, name=f"worker-{i}", **env) for i in range(2)]
            started = time.monotonic()
            schedule = [(0.20, "kill a worker"), (0.35, "restart the receiver"), (0.50, "stop the database for 10 s"),
                        (0.70, "kill a worker")]
            for share, fault in schedule:
                while time.monotonic() - started < share * ideal:
                    time.sleep(0.2)
                print(f"{time.monotonic() - started:7.1f} s  {fault}", flush=True)
                if fault == "kill a worker":
                    victim = next(w for w in workers if w.poll() is None)
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    workers.append(worker(url, sandbox.url, folder, mps=args.mps, name=f"worker-{len(workers)}", **env))
                elif fault == "restart the receiver":
                    receiver.kill()
                    time.sleep(3)
                    receiver.start()
                else:
                    cluster.stop()
                    time.sleep(10)
                    cluster.start()
            for w in workers:
                w.wait()
            finished = time.monotonic() - started
            ledger = _ledger(sandbox.url)
            deadline = time.monotonic() + 300
            while (wrong := disagreements(db, campaign_id, _truth(ledger))) and time.monotonic() < deadline:
                time.sleep(2)
                ledger = _ledger(sandbox.url)
            figures = httpx.get(f"{sandbox.url}/_sandbox/figures", params={"phone_number_id": SENDER}, timeout=60).json()
        receiver.stop()
        db.close()
    reached = {e["wa_id"] for e in ledger if e["outcome"] == "accepted" or e.get("sent_anyway")}
    print(f"messages {args.messages} at {args.mps} MPS, two workers, faults: {', '.join(f for _, f in schedule)}")
    print(f"duplicates {figures['duplicate_sends']}, missing {args.messages - len(reached)}, "
          f"unresolved at the end {len(wrong)}")
    print(f"time to finish {finished:.0f} s against the ideal {ideal:.0f} s ({finished / ideal:.2f}x); "
          f"sustained rate {figures['accepted_per_second']:.1f}/s; largest sliding second {figures['max_in_any_second']} "
          f"(accepted {figures['max_accepted_in_any_second']}; {figures['throttled']} x 130429)")
    for line in wrong[:5]:
        print("  ", line)


def _truth(ledger: list[dict[str, Any]]) -> dict[str, str]:
    """wamid -> what the sandbox decided, for the messages it accepted and for those it sent
    although it answered 5xx (the engine learns those from their webhooks)."""
    return {**sandbox_truth(ledger), **{e["wamid"]: e["fate"] for e in ledger if e.get("sent_anyway") and e.get("wamid")}}


def _ledger(url: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/_sandbox/ledger", params={"phone_number_id": SENDER}, timeout=120).json()
    return answer["entries"] if isinstance(answer, dict) else answer


if __name__ == "__main__":
    main()
