"""The commands a user runs after sending, and the servers, each run as the user runs them:
`import` (ragged rows, `--check-contacts` against the sandbox), `report` (`-o -`, `--chart`,
`--summary --json`), `reconcile [--replay]`, `webhooks`, `sandbox`, and `demo` checked
against what the sandbox (Meta) decided."""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "sandbox"))

from dispatch_helpers import free_port  # noqa: E402
from sandbox_helpers import FAST, PHONE_ID as SENDER, SECRET, TOKEN, WABA_ID as WABA, template_message  # noqa: E402

from campaign.config import Settings  # noqa: E402
from campaign.db import Database  # noqa: E402
from campaign.models import WebhookEvent  # noqa: E402
from campaign.sandbox.config import SandboxConfig  # noqa: E402
from campaign.sandbox.server import BackgroundServer, SandboxServer  # noqa: E402
from campaign.webhooks import create_app, signature  # noqa: E402

VERIFY = "verify-me"
UNREACHABLE = "+447911123456"
ROWS = ("first_name,phone,order_id\n"
        "Zoë,+4915123000001,A-1\nJosé,+4915123000002,A-2\nAna,+4915123000003,A-3\nBen,+447911123456,A-4\n"
        "Cleo,+4915123000005,A-5\nDan,+4915123000006,A-6\n")
INTERFACE_COLUMNS = ["phone", "wa_id", "status", "wamid", "error_code", "error_title", "sent_at", "delivered_at",
                     "read_at", "failed_at", "replied_at", "reply", "user_id"]


def sandbox_config(**overrides: Any) -> SandboxConfig:
    """The sandbox tests' fast settings (no latency, webhooks within milliseconds), with
    some reads and one number not on WhatsApp, so a report has every outcome."""
    settings = {**FAST, "read_fraction": 0.5, "not_on_whatsapp": frozenset({UNREACHABLE}), **overrides}
    return SandboxConfig(**settings)


def env_for(sandbox_url: str) -> dict[str, str]:
    return {"WA_API_BASE_URL": sandbox_url, "WA_ACCESS_TOKEN": TOKEN, "WA_PHONE_NUMBER_ID": SENDER,
            "WA_BUSINESS_ACCOUNT_ID": WABA, "CAMPAIGN_PAIR_INTERVAL": "0"}


def create_spring(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "r.csv").write_text(ROWS, encoding="utf-8")
    created = cli("create", "spring", "--template", "order_update", "--language", "en_US",
                  "--param", "first_name", "--param", "order_id")
    assert created.exit_code == 0, created.stderr


def fates(sandbox: SandboxServer) -> dict[str, str]:
    """What the sandbox decided for each number it accepted a message for (its ledger)."""
    entries = sandbox.call(sandbox.sandbox.ledger.snapshot, SENDER)
    return {"+" + e.wa_id: e.fate for e in entries if e.reached_user}


def report_rows(cli, *options: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    result = cli("report", "spring", "-o", "-", *options)
    assert result.exit_code == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- import: structural errors ---------------------------------------------------------------


@pytest.fixture
def spring(cli, tmp_path: Path):  # type: ignore[no-untyped-def]
    create_spring(cli, tmp_path)
    return cli


def test_a_row_with_fewer_fields_than_the_header_imports_nothing_and_names_its_line(spring, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "short.csv").write_text(
        "first_name,phone,order_id\nZoë,+4915123000001,A-1\nJosé,+4915123000002,A-2\n+4915123000003,A-3\nBen,+4915123000004,A-4\n",
        encoding="utf-8")
    result = spring("import", "spring", "short.csv")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: short.csv: line 4 has 2 fields, the header has 3"
    assert json.loads(spring("status", "spring", "--json").stdout)["total"] == 0
    assert not (tmp_path / "spring-rejects.csv").exists()


def test_a_short_row_after_a_quoted_newline_is_named_by_its_own_line(spring, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "r.csv").write_text(
        'first_name,phone,order_id\n"Zoë\nvon Berg",+4915123000001,A-1\nJosé;+4915123000002;A-2\n', encoding="utf-8")
    result = spring("import", "spring", "r.csv")
    assert result.exit_code == 1 and result.stderr.strip() == "error: r.csv: line 4 has 1 field, the header has 3"


def test_quoted_delimiters_blank_lines_and_empty_cells_are_not_ragged(spring, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "ok.csv").write_text(
        'first_name,phone,order_id,note\n"Zoë, Jr.",+4915123000001,"A-1,2",\n\nJosé,+4915123000002,A-2,"a\nb"\n'
        '\n,,,\nAna,"+49 151 23000003",A-3,x\n\n', encoding="utf-8")
    result = spring("import", "spring", "ok.csv")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("imported 3, rejected 0")
    rows = {r["phone"]: r for r in report_rows(spring)}
    assert rows["+4915123000001"]["first_name"] == "Zoë, Jr." and rows["+4915123000001"]["order_id"] == "A-1,2"
    assert rows["+4915123000001"]["note"] == "" and rows["+4915123000002"]["note"] == "a\nb"


def test_a_file_with_old_mac_line_endings_imports(spring, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "mac.csv").write_bytes(b"first_name,phone,order_id\rZo,+4915123000001,A-1\rAna,+4915123000003,A-3\r")
    result = spring("import", "spring", "mac.csv")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("imported 2, rejected 0")


# -- import --check-contacts against the sandbox ------------------------------------------


def test_check_contacts_asks_the_sandbox_and_rejects_who_it_says_is_not_on_whatsapp(spring, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with SandboxServer(sandbox_config(not_on_whatsapp=frozenset({"447911123456", "4915123000005"}))) as sandbox:
        result = spring("import", "spring", "r.csv", "--check-contacts", env=env_for(sandbox.url))
        asked = sandbox.call(lambda: sandbox.sandbox.ledger.other_requests["contacts"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("imported 4, rejected 2 (invalid 0, duplicate 0, suppressed 0, not_on_whatsapp 2)")
    assert asked >= 1
    with open(tmp_path / "spring-rejects.csv", encoding="utf-8") as f:
        rejects = {r["phone"]: r["reason"] for r in csv.DictReader(f)}
    assert rejects == {"+447911123456": "not_on_whatsapp", "+4915123000005": "not_on_whatsapp"}
    assert {r["phone"] for r in report_rows(spring)} == {
        "+4915123000001", "+4915123000002", "+4915123000003", "+4915123000006"}


# -- a campaign sent through the sandbox, its statuses stored by the receiver ------------


@pytest.fixture
def sent(cli, tmp_path: Path, database_url: str) -> Iterator[tuple[Any, SandboxServer]]:
    """Campaign `spring` sent through the sandbox, whose status webhooks (duplicated and out
    of order) the receiver stored without applying them (`reconcile=False`)."""
    create_spring(cli, tmp_path)
    db = Database.open(database_url, migrate=False)
    app = create_app(db, Settings(app_secret=SECRET, verify_token=VERIFY), reconcile=False)
    with BackgroundServer(app) as receiver:
        config = sandbox_config(webhook_url=f"{receiver.url}/webhook", duplicate_rate=0.5, out_of_order_rate=0.5)
        with SandboxServer(config) as sandbox:
            assert cli("import", "spring", "r.csv").exit_code == 0
            launched = cli("launch", "spring", env=env_for(sandbox.url))
            assert launched.exit_code == 0, launched.stderr
            assert sandbox.wait_webhooks_idle()
            yield cli, sandbox
    db.close()


def test_reconcile_applies_the_stored_statuses_and_replay_rebuilds_the_same_states(sent) -> None:  # type: ignore[no-untyped-def]
    cli, sandbox = sent
    truth = fates(sandbox)
    assert len(truth) == 6 and truth[UNREACHABLE] == "failed" and set(truth.values()) & {"delivered", "read"}
    assert {r["status"] for r in report_rows(cli)} == {"sent"}  # stored, not applied yet

    result = cli("reconcile")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("events ") and "statuses applied 0," not in result.stdout
    applied = report_rows(cli)
    assert {r["phone"]: r["status"] for r in applied} == truth
    failed = next(r for r in applied if r["phone"] == UNREACHABLE)
    assert failed["error_code"] == "131026" and failed["failed_at"]
    assert all(r["read_at"] for r in applied if r["status"] == "read")

    again = cli("reconcile")
    assert again.exit_code == 0 and again.stdout.startswith("events 0,")
    replayed = cli("reconcile", "--replay")
    assert replayed.exit_code == 0, replayed.stderr
    assert report_rows(cli) == applied  # same states, same times


def test_report_to_stdout_chart_and_json_summary(sent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli, sandbox = sent
    assert cli("reconcile").exit_code == 0
    truth = fates(sandbox)

    result = cli("report", "spring", "-o", "-")
    assert result.exit_code == 0, result.stderr
    header = next(csv.reader(io.StringIO(result.stdout)))
    assert header[:13] == INTERFACE_COLUMNS and "first_name" in header[13:] and "order_id" in header[13:]
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["phone"] for r in rows] == ["+4915123000001", "+4915123000002", "+4915123000003", UNREACHABLE,
                                          "+4915123000005", "+4915123000006"]  # the file's order
    assert all(r["wamid"].startswith("wamid.") and r["sent_at"].endswith("Z") for r in rows)
    failed_only = report_rows(cli, "--status", "failed")
    assert [r["phone"] for r in failed_only] == [UNREACHABLE]

    charted = cli("report", "spring", "-o", "r.csv", "--chart", "spring.png")
    assert charted.exit_code == 0, charted.stderr
    assert (tmp_path / "spring.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "r.csv").read_text(encoding="utf-8").splitlines()[0].startswith(",".join(INTERFACE_COLUMNS))

    summary = cli("report", "spring", "--summary", "--json")
    assert summary.exit_code == 0, summary.stderr
    figures = json.loads(summary.stdout)
    assert isinstance(figures, dict) and figures["campaign"] == "spring" and figures["total"] == 6
    expected = {state: list(truth.values()).count(state) for state in ("delivered", "read", "failed")}
    assert {state: figures["counts"][state] for state in expected} == expected
    assert figures["handed_to_meta"] == 6 and figures["reached"] == expected["delivered"] + expected["read"]
    assert figures["delivery_rate"] == pytest.approx(figures["reached"] / 6)
    assert [(g["code"], g["count"]) for g in figures["failures"]] == [(131026, 1)]


# -- the servers as commands -----------------------------------------------------------------


class Server:
    """`campaign ARGS` as its own process, its log in a file; `stop()` is the user's Ctrl-C."""

    def __init__(self, args: list[str], env: dict[str, str], ready_url: str, log: Path) -> None:
        self.log = log
        with log.open("wb") as f:
            self.process = subprocess.Popen([sys.executable, "-m", "campaign", *args], env=env,
                                            stdout=subprocess.DEVNULL, stderr=f)
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(ready_url, timeout=1)
                return
            except httpx.HTTPError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.process.kill()
                    self.process.wait()
                    raise AssertionError(f"`campaign {args[0]}` did not start: {log.read_text()}") from None
                time.sleep(0.05)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def base_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WA_", "CAMPAIGN_"))}
    return {**env, **variables}


def test_the_webhooks_command_verifies_stores_signed_events_refuses_unsigned_and_applies_them(
        cli, tmp_path: Path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    create_spring(cli, tmp_path)
    assert cli("import", "spring", "r.csv").exit_code == 0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    receiver = Server(["webhooks", "--port", str(port)],
                      base_env(CAMPAIGN_DATABASE_URL=database_url, WA_APP_SECRET=SECRET, WA_VERIFY_TOKEN=VERIFY),
                      f"{url}/health", tmp_path / "webhooks.log")
    db = Database.open(database_url, migrate=False)

    def stored() -> int:
        with db.read_session() as session:
            return session.scalar(select(func.count()).select_from(WebhookEvent)) or 0

    try:
        challenge = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
        verified = httpx.get(f"{url}/webhook", params=challenge)
        assert verified.status_code == 200 and verified.text == "1158201444"
        assert httpx.get(f"{url}/webhook", params={**challenge, "hub.verify_token": "guess"}).status_code == 403

        body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [{
            "field": "messages", "value": {"messaging_product": "whatsapp", "metadata": {
                "display_phone_number": "15550783881", "phone_number_id": SENDER},
                "statuses": [{"id": "wamid.unknown", "status": "delivered", "timestamp": "1767225600",
                              "recipient_id": "4915123000001"}]}}]}]}).encode()
        headers = {"Content-Type": "application/json"}
        assert httpx.post(f"{url}/webhook", content=body, headers=headers).status_code == 401
        forged = {**headers, "X-Hub-Signature-256": signature("not-the-secret", body)}
        assert httpx.post(f"{url}/webhook", content=body, headers=forged).status_code == 401
        assert stored() == 0
        signed = {**headers, "X-Hub-Signature-256": signature(SECRET, body)}
        assert httpx.post(f"{url}/webhook", content=body, headers=signed).status_code == 200
        assert stored() == 1

        # The sandbox's own signed webhooks: stored, and applied by the receiver's reconciler.
        with SandboxServer(sandbox_config(webhook_url=f"{url}/webhook")) as sandbox:
            launched = cli("launch", "spring", env=env_for(sandbox.url))
            assert launched.exit_code == 0, launched.stderr
            assert sandbox.wait_webhooks_idle()
            truth = fates(sandbox)
        until(lambda: {r["phone"]: r["status"] for r in report_rows(cli)} == truth)
    finally:
        db.close()
        assert receiver.stop() == 0 and "Traceback" not in receiver.log.read_text()


def test_the_sandbox_command_answers_a_send_and_stops(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sandbox = Server(["sandbox", "--port", str(port), "--latency-ms", "0"],
                     base_env(WA_ACCESS_TOKEN=TOKEN, WA_PHONE_NUMBER_ID=SENDER), f"{url}/_sandbox/health",
                     tmp_path / "sandbox.log")
    try:
        path = f"{url}/v21.0/{SENDER}/messages"
        answer = httpx.post(path, json=template_message("+4915123000001"), headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["messages"][0]["id"].startswith("wamid.")
        refused = httpx.post(path, json=template_message("+4915123000001"), headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == 190
        assert httpx.get(f"{url}/_sandbox/figures").json()["accepted"] == 1
    finally:
        assert sandbox.stop() == 0 and "Traceback" not in sandbox.log.read_text()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/_sandbox/health", timeout=1)


# -- campaign demo against the sandbox's ledger ----------------------------------------------


@pytest.mark.slow
def test_the_demo_report_agrees_with_what_the_sandbox_decided(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's duplicated, reordered webhooks and transient faults, sped up: every recipient
    got exactly one message, and the report says what the sandbox decided for each."""
    from campaign import demo

    sandboxes: list[SandboxServer] = []

    class Kept(SandboxServer):
        def __enter__(self) -> SandboxServer:
            sandboxes.append(self)
            return super().__enter__()

    def fast(webhook_url: str, token: str, secret: str) -> SandboxConfig:
        config = original(webhook_url, token, secret)
        assert config.duplicate_rate > 0 and config.out_of_order_rate > 0 and config.transient_rate > 0
        return dataclasses.replace(config, latency_ms=(1.0, 5.0), sent_delay_ms=(0.0, 20.0),
                                   delivered_delay_ms=(0.0, 50.0), read_delay_ms=(0.0, 100.0),
                                   failed_delay_ms=(0.0, 20.0), webhook_flush_interval=0.02, mps=1000)

    original = demo.sandbox_config
    monkeypatch.setattr(demo, "sandbox_config", fast)
    monkeypatch.setattr(demo, "SandboxServer", Kept)
    # A 5xx answer waits `server_error_grace` (60 s) for a status, and the recipient stays
    # reserved for the claim's lease and the pair interval, before the send is retried.
    monkeypatch.setattr(demo, "Settings", functools.partial(Settings, mps=400, server_error_grace=1.0, lease=3.0,
                                                            pair_interval=0.0))
    result = demo.run(tmp_path / "demo", settle_seconds=30)

    (sandbox,) = sandboxes
    reached = [e for e in sandbox.sandbox.ledger.snapshot(demo.SENDER) if e.reached_user]
    by_number: dict[str, list[Any]] = {}
    for entry in reached:
        by_number.setdefault("+" + "".join(c for c in entry.to if c.isdigit()), []).append(entry)  # wa_id may differ
    assert {n: len(e) for n, e in by_number.items() if len(e) != 1} == {}  # nobody got two messages

    with open(result.report, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result.imported.imported == 295
    disagree = []
    for row in rows:
        entries = by_number.get(row["phone"])
        if entries is None:  # never reached Meta: failed by the API's answers alone
            if row["status"] != "failed" or row["wamid"]:
                disagree.append((row["phone"], row["status"], "never reached the sandbox"))
            continue
        (entry,) = entries
        if (row["status"], row["wamid"]) != (entry.fate, entry.wamid):
            disagree.append((row["phone"], row["status"], row["wamid"], entry.fate, entry.wamid))
        elif entry.fate == "failed" and row["error_code"] != str(entry.failure_code):
            disagree.append((row["phone"], row["error_code"], entry.failure_code))
    assert disagree == []
    assert {r["status"] for r in rows} >= {"delivered", "read", "failed"}
