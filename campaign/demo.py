"""`campaign demo`: the whole job on the embedded default, with nothing to set up.

In a fresh folder: a SQLite database, the sandbox standing in for Meta (realistic latency,
a few unreachable numbers, a few transient faults, status webhooks), the webhook receiver
with its reconciler, and a worker. It imports the sample recipients, launches a template
campaign, waits for the statuses to settle, and writes the summary, the report and a chart.
Everything runs in this process (the servers in threads), so nothing outlives it.
"""

from __future__ import annotations

import importlib.resources
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


from campaign import campaigns, export, sending
from campaign.chart import write_chart
from campaign.config import Settings
from campaign.db import Database
from campaign.dispatcher import DispatchStats
from campaign.files import campaign_file
from campaign.importer import ImportOptions, ImportResult, default_rejects_path, import_file
from campaign.models import WebhookEvent
from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.server import BackgroundServer, SandboxServer
from campaign.summary import Summary, summary
from campaign.webhooks import create_app

NAME = "demo"
SENDER = "106540352242922"
WABA = "102290129340398"


@dataclass
class DemoResult:
    folder: Path
    imported: ImportResult
    stats: DispatchStats
    summary: Summary
    report: Path
    chart: Path


def sample_recipients() -> Path:
    """The sample file shipped with the package (`sample_data/recipients.csv` in the repository)."""
    return Path(str(importlib.resources.files("campaign.sample_data") / "recipients.csv"))


def sandbox_config(webhook_url: str, token: str, secret: str) -> SandboxConfig:
    """Meta as a campaign meets it: latency, 3% not on WhatsApp, 2% transient faults (half of
    them answered 5xx though the message went out), 95% delivered, 60% of those read within
    seconds (sped up from hours for the demo)."""
    return SandboxConfig(
        access_token=token, app_secret=secret, phone_number_id=SENDER, waba_id=WABA,
        latency_ms=(80.0, 250.0), transient_rate=0.02, transient_sent_fraction=0.5, not_on_whatsapp_fraction=0.03,
        webhook_url=webhook_url, sent_delay_ms=(50.0, 300.0), delivered_delay_ms=(200.0, 1500.0),
        read_delay_ms=(500.0, 4000.0), delivered_fraction=0.95, read_fraction=0.6,
        duplicate_rate=0.05, out_of_order_rate=0.05, seed=2026,
    )


def run(
    folder: Path | None = None,
    *,
    on_progress: Callable[[str, dict[str, int]], None] | None = None,
    settle_seconds: float = 60.0,
) -> DemoResult:
    folder = Path(folder or tempfile.mkdtemp(prefix="campaign-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    token, secret = secrets.token_hex(16), secrets.token_hex(16)
    # The sandbox posts a status within a second of a send: a 5xx whose message did not go out
    # is sent again after 3 s here, not Meta's CAMPAIGN_SERVER_ERROR_GRACE.
    settings = Settings(database_url=f"sqlite:///{folder / 'campaign.db'}", access_token=token, app_secret=secret,
                        verify_token=secrets.token_hex(8), phone_number_id=SENDER, business_account_id=WABA,
                        server_error_grace=3.0)
    db = Database.open(settings.database_url)
    try:
        with BackgroundServer(create_app(Database.open(settings.database_url), settings)) as receiver:
            config = sandbox_config(f"{receiver.url}/webhook", token, secret)
            with SandboxServer(config) as sandbox:
                settings = settings.with_overrides(api_base_url=sandbox.url)
                with db.session() as session:
                    campaigns.create(session, campaigns.CampaignSpec(
                        NAME, "order_update", "en_US", ["first_name", "order_id"], category="utility"))
                imported = import_file(db, NAME, sample_recipients(), ImportOptions(
                    default_region="DE", rejects_path=folder / default_rejects_path(NAME)))
                with db.session() as session:
                    campaigns.launch(session, campaigns.get(session, NAME))
                stats = _send(db, settings, on_progress)
                _settle(db, sandbox, settle_seconds, on_progress)
        figures = summary(db, NAME)
        report = export.write_report(db, NAME, folder / export.default_path(NAME)).path
        chart = write_chart(db, NAME, folder / campaign_file(NAME, "chart", ".png"), figures=figures)
        assert report is not None
        return DemoResult(folder, imported, stats, figures, Path(report), Path(chart))
    finally:
        db.close()


def _send(db: Database, settings: Settings, on_progress: Callable[[str, dict[str, int]], None] | None) -> DispatchStats:
    def progress(stats: DispatchStats) -> None:
        if on_progress is not None:
            on_progress("sending", _counts(db))

    return sending.run_worker(db, settings, campaigns_=[NAME], exit_when_idle=True, on_progress=progress).stats


def _settle(db: Database, sandbox: SandboxServer, limit: float,
            on_progress: Callable[[str, dict[str, int]], None] | None) -> None:
    """Until Meta (the sandbox) has nothing left to tell and every stored event is applied."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if on_progress is not None:
            on_progress("waiting for statuses", _counts(db))
        if sandbox.call(sandbox.sandbox.webhooks.idle) and not _unprocessed(db):
            break
        time.sleep(0.25)


def _unprocessed(db: Database) -> bool:
    from sqlalchemy import select

    with db.read_session() as session:
        return session.scalar(select(WebhookEvent.id).where(WebhookEvent.processed_at.is_(None)).limit(1)) is not None


def _counts(db: Database) -> dict[str, int]:
    with db.read_session() as session:
        campaign = campaigns.get(session, NAME)
        return campaigns.counts(session, [campaign.id])[campaign.id].by_state
