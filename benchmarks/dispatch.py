"""Dispatch benchmark: a campaign sent to the sandbox (its own process) at a given cap.

    python benchmarks/dispatch.py                                   # 20,000 at 80 MPS, 150-250 ms
    python benchmarks/dispatch.py --messages 60000 --mps 1000 --latency 50-100
    python benchmarks/dispatch.py --messages 60000 --mps 1000 --latency 50-100 --workers 3 \\
        --database postgresql+psycopg://postgres@127.0.0.1:5432/test
    python benchmarks/dispatch.py --outside-window 0.5               # half wait for their window

`--outside-window F` gives the campaign a send window that is open now in Berlin and closed
in Tokyo, and makes that share of the recipients (spread through the list) Tokyo numbers:
the rate is that of the others, who must still fill the cap. The workers are stopped once
every Berlin recipient is sent (the rest would wait for Tokyo's morning).

Prints the sustained rate (accepted / time between the first and last accepted arrival, as
the sandbox counts them), the accepted count of each whole second, the largest number of
arrivals in any sliding second, throttling errors, duplicates, and the CPU the workers and
the sandbox used. Workers run as `campaign worker` processes.

The sandbox counts a request when it handles it, so anything that stalls the sandbox's
process (a busy machine, its own garbage collector) stamps the requests that waited as
arriving together; on two cores at 1,000 MPS the busiest second can pass the 970 paced by
a few tens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from dispatch_helpers import SENDER, TOKEN, free_port, fresh_database, phones, seed  # noqa: E402
from measure import process_cpu_seconds  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--mps", type=int, default=80)
    parser.add_argument("--latency", default="150-250")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--database", help="SQLAlchemy URL (default: a fresh SQLite file)")
    parser.add_argument("--outside-window", type=float, default=0.0, metavar="F",
                        help="share of recipients outside the campaign's send window (Tokyo numbers)")
    args = parser.parse_args()
    numbers, window = phones(args.messages), None
    if args.outside_window:
        berlin = datetime.now(timezone.utc).astimezone(ZoneInfo("Europe/Berlin")).hour
        window = f"{(berlin - 1) % 24:02d}:00-{(berlin + 2) % 24:02d}:00"
        every = round(1 / args.outside_window)
        numbers = [f"+8190{i:08d}" if i % every == 0 else number for i, number in enumerate(numbers)]
    inside = sum(1 for n in numbers if not n.startswith("+81"))

    with tempfile.TemporaryDirectory() as folder:
        url = args.database or f"sqlite:///{folder}/bench.db"
        db = fresh_database(url)
        seed(db, "bench", numbers, running=True, send_window=window)
        db.close()

        port = free_port()
        low, _, high = args.latency.partition("-")
        config = {"access_token": TOKEN, "phone_number_id": SENDER, "mps": args.mps, "pair_interval": 6,
                  "latency_ms": [float(low), float(high or low)]}
        Path(folder, "sandbox.json").write_text(json.dumps(config))
        sandbox = subprocess.Popen([sys.executable, "-m", "campaign.sandbox", "--port", str(port),
                                    "--config", f"{folder}/sandbox.json"])
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(f"{base}/_sandbox/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        env = {**os.environ, "CAMPAIGN_DATABASE_URL": url, "WA_API_BASE_URL": base, "WA_ACCESS_TOKEN": TOKEN,
               "WA_PHONE_NUMBER_ID": SENDER, "CAMPAIGN_MPS": str(args.mps)}
        try:
            start = time.perf_counter()
            workers = [subprocess.Popen([sys.executable, "-m", "campaign", "worker", "--exit-when-idle"], env=env)
                       for _ in range(args.workers)]
            if window:  # the workers would wait for Tokyo's morning: stop them when Berlin is done
                while httpx.get(f"{base}/_sandbox/figures", params={"phone_number_id": SENDER}).json()["accepted"] < inside:
                    time.sleep(0.5)
                for worker in workers:
                    worker.terminate()
            for worker in workers:
                worker.wait()
            wall = time.perf_counter() - start
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            figures = httpx.get(f"{base}/_sandbox/figures", params={"phone_number_id": SENDER}).json()
            sandbox_cpu = process_cpu_seconds(sandbox.pid)
        finally:
            sandbox.terminate()
            sandbox.wait()
    cpu = usage.ru_utime + usage.ru_stime
    print(f"{args.messages:,} messages, cap {args.mps} MPS, latency {args.latency} ms, "
          f"{args.workers} worker(s) on {url.split(':')[0]}")
    if window:
        print(f"send window {window}: {args.messages - inside:,} recipients outside it (Tokyo), {inside:,} inside (Berlin)")
    print(f"sustained rate: {figures['accepted_per_second']:.1f} MPS ({figures['accepted_per_second'] / args.mps:.1%} of the cap)")
    each = figures["accepted_each_second"][1:-1]  # whole seconds only
    if each:
        print(f"accepted per whole second: median {statistics.median(each):.0f}, lowest {min(each)}; "
              f"each second: {' '.join(map(str, figures['accepted_each_second']))}")
    print(f"largest count in any sliding second: {figures['max_in_any_second']} (accepted {figures['max_accepted_in_any_second']})")
    print(f"accepted {figures['accepted']}, throttled (130429) {figures['throttled']}, pair-limit hits {figures['pair_limit_hits']}, "
          f"duplicates {figures['duplicate_sends']}")
    print(f"wall {wall:.1f} s; worker CPU {cpu:.1f} s in all ({cpu / wall:.2f} cores), "
          f"{cpu / max(figures['accepted'], 1) * 1e3:.2f} ms CPU per message")
    print(f"sandbox CPU {sandbox_cpu:.1f} s ({sandbox_cpu / wall:.2f} cores); the machine has {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
