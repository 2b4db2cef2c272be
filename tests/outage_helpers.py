"""Faults for the outage tests: a private PostgreSQL cluster the test may stop and start, and
the webhook receiver and workers as real processes.

The private cluster lives in a temporary folder on a free port and belongs to the test
alone: stopping it never touches the shared server the other tests use. PostgreSQL refuses
to run as root, so as root the cluster runs as the `postgres` user (through `runuser`, else
`su`); when no cluster can be started the caller skips with the reason
(`PrivateClusterUnavailable`).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from dispatch_helpers import SENDER, TOKEN, free_port

from campaign.db import Database
from campaign.models import Message

SECRET = "outage-test-secret"
VERIFY = "outage-verify"


class PrivateClusterUnavailable(RuntimeError):
    """No private PostgreSQL cluster can be started here (the reason is the message)."""


class PrivateCluster:
    """A PostgreSQL cluster of the test's own: `stop()` and `start()` it at will."""

    def __init__(self, folder: Path, port: int, run_as: list[str]) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "server.log"
        self.port = port
        self._run_as = run_as
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [*args]
        if self._run_as and self._run_as[0] == "su":  # su takes one shell command line
            command = [*self._run_as, shlex.join(command)]
        elif self._run_as:
            command = [*self._run_as, *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.folder)

    def init(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise PrivateClusterUnavailable(f"initdb failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30", "start")
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise PrivateClusterUnavailable(f"pg_ctl start failed: {(done.stderr or done.stdout).strip()[-500:]} {log}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends every session at once (clients see their connections
        dropped), as a restart by an operator or a failover does."""
        done = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {(done.stderr or done.stdout).strip()}")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0


def _run_as_prefix() -> list[str]:
    """How to run initdb/pg_ctl as a user PostgreSQL accepts: nothing unless we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PrivateClusterUnavailable("running as root and there is no `postgres` user to run the cluster as") from None
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    if shutil.which("su"):
        return ["su", "postgres", "-s", "/bin/sh", "-c"]
    raise PrivateClusterUnavailable("running as root and neither runuser nor su can switch to `postgres`")


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A fresh cluster, started; stopped and removed afterwards. Raises PrivateClusterUnavailable."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            raise PrivateClusterUnavailable(f"{tool} is not on PATH")
    run_as = _run_as_prefix()
    # Not under pytest's tmp_path: as root that is a 0700 folder the postgres user cannot enter.
    folder = Path(tempfile.mkdtemp(prefix="campaign-outage-pg-"))
    cluster = PrivateCluster(folder, free_port(), run_as)
    try:
        if run_as:
            user = pwd.getpwnam("postgres")
            os.chown(folder, user.pw_uid, user.pw_gid)
        folder.chmod(0o700)
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            cluster._run("pg_ctl", "-D", str(cluster.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


# -- the engine's processes -----------------------------------------------------------------------


def _debug_stderr(name: str, folder: Path) -> Any:
    """Where a process's log goes: OUTAGE_DEBUG=1 shows it, else a file beside the test's."""
    if os.environ.get("OUTAGE_DEBUG"):
        return None
    return open(folder / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it open)


def worker(database_url: str, sandbox_url: str, folder: Path, *, mps: int = 100, name: str = "worker",
           **env: str) -> subprocess.Popen[bytes]:
    """A real `campaign worker --exit-when-idle`, with the short leases and graces of a test."""
    variables = {**os.environ, "CAMPAIGN_DATABASE_URL": database_url, "WA_API_BASE_URL": sandbox_url,
                 "WA_ACCESS_TOKEN": TOKEN, "WA_PHONE_NUMBER_ID": SENDER, "CAMPAIGN_MPS": str(mps),
                 "CAMPAIGN_PAIR_INTERVAL": "0", "CAMPAIGN_LEASE": "5", "CAMPAIGN_SEND_GRACE": "30",
                 "CAMPAIGN_SERVER_ERROR_GRACE": "5", **env}
    return subprocess.Popen([sys.executable, "-m", "campaign", "-v", "worker", "--exit-when-idle"], env=variables,
                            stdout=subprocess.DEVNULL, stderr=_debug_stderr(name, folder))


class Receiver:
    """`campaign webhooks` as its own process, on a port that stays the same across restarts."""

    def __init__(self, database_url: str, folder: Path, port: int | None = None) -> None:
        self.database_url = database_url
        self.folder = folder
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 20) -> None:
        env = {**os.environ, "CAMPAIGN_DATABASE_URL": self.database_url, "WA_APP_SECRET": SECRET,
               "WA_VERIFY_TOKEN": VERIFY, "WA_PHONE_NUMBER_ID": SENDER}
        self.starts += 1
        self.process = subprocess.Popen(
            [sys.executable, "-m", "campaign", "webhooks", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=_debug_stderr(f"receiver-{self.starts}", self.folder))
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the receiver exited with {self.process.returncode} (see {self.folder})")
            if time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def health(self) -> int:
        return httpx.get(f"{self.url}/health", timeout=5).status_code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextmanager
def receiver_process(database_url: str, folder: Path) -> Iterator[Receiver]:
    receiver = Receiver(database_url, folder)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


# -- the truth ----------------------------------------------------------------------------------


def sandbox_truth(ledger: list[dict[str, Any]]) -> dict[str, str]:
    """wamid -> the last status the sandbox decided for each message it accepted."""
    return {e["wamid"]: e["fate"] for e in ledger if e["outcome"] == "accepted"}


def database_states(db: Database, campaign_id: int) -> dict[int, tuple[str | None, str]]:
    """message id -> (wamid, state)."""
    with db.read_session() as session:
        return {mid: (wamid, state) for mid, wamid, state in session.execute(
            select(Message.id, Message.wamid, Message.state).where(Message.campaign_id == campaign_id))}


def disagreements(db: Database, campaign_id: int, truth: dict[str, str]) -> list[str]:
    """Messages whose state in the database is not what the sandbox decided (empty: all agree)."""
    wrong = []
    for mid, (wamid, state) in sorted(database_states(db, campaign_id).items()):
        fate = truth.get(wamid) if wamid else None
        if fate is None or state != fate:
            wrong.append(f"message {mid}: {state} (wamid {wamid}), sandbox: {fate}")
    return wrong


def wait_agreed(db: Database, campaign_id: int, ledger: Any, timeout: float = 30) -> list[str]:
    """Wait until every message's state agrees with the sandbox; what still disagrees."""
    deadline = time.monotonic() + timeout
    while True:
        wrong = disagreements(db, campaign_id, sandbox_truth(ledger()))
        if not wrong or time.monotonic() > deadline:
            return wrong
        time.sleep(0.25)
