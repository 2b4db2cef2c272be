"""Workers die mid-campaign (SIGKILL) and several share one database: still exactly once.

End to end: the sandbox in its own process posts signed status webhooks to the engine's
receiver, whose reconciler resolves the messages a killed worker left in doubt; workers
are real `campaign worker` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dispatch_helpers import SENDER, TOKEN, phones, sandbox_process, seed, states  # noqa: E402

from campaign.config import Settings  # noqa: E402
from campaign.db import Database  # noqa: E402
from campaign.sandbox.server import BackgroundServer  # noqa: E402
from campaign.webhooks import create_app  # noqa: E402

SECRET = "crash-test-secret"


@pytest.fixture
def receiver(db: Database, database_url: str) -> Iterator[str]:
    settings = Settings(database_url=database_url, app_secret=SECRET, verify_token="verify")
    with BackgroundServer(create_app(Database.open(database_url), settings)) as server:
        yield f"{server.url}/webhook"


def worker(database_url: str, sandbox_url: str, mps: int = 100, log: Path | None = None) -> subprocess.Popen[bytes]:
    """A `campaign worker` process; its log goes to `log` (or, with CRASH_DEBUG=1, the terminal)."""
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": database_url, "WA_API_BASE_URL": sandbox_url,
           "WA_ACCESS_TOKEN": TOKEN, "WA_PHONE_NUMBER_ID": SENDER, "CAMPAIGN_MPS": str(mps),
           "CAMPAIGN_PAIR_INTERVAL": "0", "CAMPAIGN_LEASE": "5", "CAMPAIGN_SEND_GRACE": "6"}
    stderr: Any = None if os.environ.get("CRASH_DEBUG") else subprocess.DEVNULL
    if log is not None:
        stderr = log.open("wb")
    return subprocess.Popen([sys.executable, "-m", "campaign", "worker", "--exit-when-idle"], env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr)


def wait_settled(db: Database, campaign_id: int, total: int, timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = states(db, campaign_id)
        if counts.get("read", 0) == total:
            break
        time.sleep(0.2)
    return states(db, campaign_id)


@pytest.mark.slow
def test_a_worker_killed_three_times_still_sends_each_message_exactly_once(
    db: Database, database_url: str, receiver: str, tmp_path: Path
) -> None:
    campaign_id = seed(db, "spring", phones(400))
    sandbox_config = {"mps": 1000, "pair_interval": 0, "latency_ms": [50, 150], "webhook_url": receiver,
                      "app_secret": SECRET, "sent_delay_ms": [0, 50], "delivered_delay_ms": [0, 50],
                      "read_delay_ms": [0, 50], "delivered_fraction": 1.0, "read_fraction": 1.0, "seed": 11}
    with sandbox_process(tmp_path, **sandbox_config) as sandbox:
        for kill in range(3):
            before = sandbox.figures()["accepted"]
            process = worker(database_url, sandbox.url)
            deadline = time.monotonic() + 20
            while sandbox.figures()["accepted"] < before + 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.1 * kill)  # mid-campaign, with requests in flight
            process.send_signal(signal.SIGKILL)
            process.wait()
            sent_so_far = sandbox.figures()["accepted"]
            assert 0 < sent_so_far < 400, f"kill {kill + 1} did not land mid-campaign ({sent_so_far} sent)"
        last = worker(database_url, sandbox.url)
        assert last.wait(90) == 0
        counts = wait_settled(db, campaign_id, 400)
        figures = sandbox.figures()
    assert figures["accepted"] == 400, figures
    assert figures["duplicate_sends"] == 0
    assert counts == {"read": 400}


@pytest.mark.slow
def test_three_workers_share_the_cap_survive_a_kill_and_never_send_twice(
    db: Database, database_url: str, receiver: str, tmp_path: Path
) -> None:
    """On either database, SQLite's default included: three worker processes at once, one
    killed mid-campaign and replaced; the cap holds, nobody gets two, nobody is missed, and no
    worker meets `database is locked`."""
    campaign_id = seed(db, "spring", phones(900))
    sandbox_config = {"mps": 150, "pair_interval": 0, "latency_ms": [20, 80], "webhook_url": receiver,
                      "app_secret": SECRET, "sent_delay_ms": [0, 50], "delivered_delay_ms": [0, 50],
                      "read_delay_ms": [0, 50], "delivered_fraction": 1.0, "read_fraction": 1.0, "seed": 7}
    logs = [tmp_path / f"worker-{i}.log" for i in range(4)]
    with sandbox_process(tmp_path, **sandbox_config) as sandbox:
        workers = [worker(database_url, sandbox.url, mps=150, log=logs[i]) for i in range(3)]
        deadline = time.monotonic() + 20
        while sandbox.figures()["accepted"] < 250 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        assert sandbox.figures()["accepted"] < 900, "the kill did not land mid-campaign"
        workers.append(worker(database_url, sandbox.url, mps=150, log=logs[3]))
        assert [w.wait(90) for w in workers[1:]] == [0, 0, 0]
        counts = wait_settled(db, campaign_id, 900)
        figures = sandbox.figures()
    assert figures["accepted"] == 900 and figures["duplicate_sends"] == 0
    assert figures["max_in_any_second"] <= 150 and figures["throttled"] == 0
    assert counts == {"read": 900}
    for path in logs:
        assert "database is locked" not in path.read_text(errors="replace"), path.name
