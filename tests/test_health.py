"""Template and sender health (health.py): Meta's template status, quality and capability
webhooks applied by the reconciler, order-free and idempotent; `campaign sender`; launch's look
at the sender; the dispatcher's cap and budget from what Meta said."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from campaign import campaigns, health
from campaign.config import Settings, load_settings
from campaign.db import Database
from campaign.dispatcher import DispatchConfig, Dispatcher
from campaign.events import parse_event
from campaign.exceptions import CampaignError
from campaign.models import Campaign, Sender, TemplateStatus
from campaign.reconcile import reconcile_once, replay
from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.health import SenderHealth as SandboxHealth
from campaign.sandbox.server import SandboxServer
from campaign.states import CampaignState
from campaign.webhooks import store_event

FIXTURES = Path(__file__).parent / "fixtures" / "meta-webhooks"
T = 1772366400  # 2026-03-01T12:00:00Z
NOW = datetime(2026, 3, 2, tzinfo=timezone.utc)
SENDER, WABA, TOKEN, DISPLAY = "106540352242922", "102290129340398", "health-token", "15550783881"


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def webhook(field: str, value: dict[str, Any], at: int | None = T, entry: str = "waba") -> bytes:
    item: dict[str, Any] = {"id": entry, "changes": [{"field": field, "value": value}]}
    if at is not None:
        item["time"] = at
    return json.dumps({"object": "whatsapp_business_account", "entry": [item]}).encode()


def template_status(event: str, at: int | None = T, *, name: str = "promo_image", language: str = "en_US",
                    reason: str = "LOW_QUALITY", entry: str = "waba") -> bytes:
    return webhook("message_template_status_update", {
        "event": event, "message_template_id": 1, "message_template_name": name,
        "message_template_language": language, "reason": reason}, at, entry)


def quality(event: str, at: int = T, display: str = DISPLAY, **value: Any) -> bytes:
    return webhook("phone_number_quality_update", {"display_phone_number": display, "event": event, **value}, at)


def capability(daily: int, at: int = T) -> bytes:
    return webhook("business_capability_update", {"max_daily_conversations_per_business": daily,
                                                  "max_phone_numbers_per_business": 2}, at)


def deliver(db: Database, *bodies: bytes, now: datetime = NOW) -> None:
    for b in bodies:
        store_event(db, b)
    reconcile_once(db, now=now)


def campaign(db: Database, name: str, *, template: str = "promo_image", language: str = "en_US",
             category: str | None = "marketing", sender: str | None = None,
             state: CampaignState = CampaignState.RUNNING) -> None:
    with db.session() as session:
        session.add(Campaign(name=name, state=state, template_name=template, template_language=language,
                             template_category=category, param_columns=[], phone_number_id=sender))


def known_sender(db: Database, phone_number_id: str = SENDER, display: str = DISPLAY, *, default: bool = False) -> None:
    with db.session() as session:
        session.add(Sender(phone_number_id=phone_number_id, display_phone_number=display, is_default=default,
                           updated_at=NOW))


def row(db: Database, name: str) -> Campaign:
    with db.read_session() as session:
        return campaigns.get(session, name)


def remembered(db: Database, name: str = "promo_image", language: str = "en_US") -> str | None:
    with db.read_session() as session:
        found = session.get(TemplateStatus, (name, language))
        return found.status if found else None


def resume(db: Database, name: str) -> None:
    with db.session() as session:
        campaigns.resume(session, campaigns.get(session, name))


# -- parsing -----------------------------------------------------------------------------------


def test_the_recorded_template_status_webhook_parses_with_its_entry_time() -> None:
    recorded = json.loads((FIXTURES / "template_status_update.json").read_text())["rejected"]
    [item] = parse_event(json.dumps(recorded).encode()).templates
    assert (item.name, item.language, item.event, item.reason) == ("abandoned_cart", "en", "REJECTED", "INVALID_FORMAT")
    assert item.at == utc(1751247548)


def test_quality_and_capability_limits_parse_as_tiers() -> None:
    [flag] = parse_event(quality("DOWNGRADE", current_limit="TIER_10K", max_daily_conversations_per_business="TIER_2K")).senders
    assert (flag.display_phone_number, flag.event, flag.limit.tier, flag.limit.daily) == (DISPLAY, "DOWNGRADE", "TIER_2K", 2000)
    [unlimited] = parse_event(capability(-1)).senders
    assert (unlimited.limit.tier, unlimited.limit.daily) == ("TIER_UNLIMITED", None)


# -- template status -------------------------------------------------------------------------------


def test_a_paused_template_pauses_only_the_campaigns_using_it_in_that_language(db: Database) -> None:
    campaign(db, "promo")
    campaign(db, "promo_later", state=CampaignState.SCHEDULED)
    campaign(db, "promo_de", language="de")
    campaign(db, "other", template="order_update")
    deliver(db, template_status("PAUSED"))
    paused = row(db, "promo")
    assert paused.state == CampaignState.PAUSED and paused.pause_code == 132015
    assert paused.pause_reason == ("Meta PAUSED template promo_image [en_US] (reason LOW_QUALITY): "
                                   "campaigns using it cannot send until Meta approves it again")
    assert row(db, "promo_later").state == CampaignState.PAUSED
    assert row(db, "promo_de").state == CampaignState.RUNNING
    assert row(db, "other").state == CampaignState.RUNNING


@pytest.mark.parametrize(("event", "code"), [("DISABLED", 132016), ("REJECTED", 132001)])
def test_disabled_and_rejected_templates_pause_with_their_code(db: Database, event: str, code: int) -> None:
    campaign(db, "promo")
    deliver(db, template_status(event))
    assert (row(db, "promo").state, row(db, "promo").pause_code) == (CampaignState.PAUSED, code)


def test_a_flagged_template_still_sends(db: Database) -> None:
    campaign(db, "promo")
    deliver(db, template_status("FLAGGED"))
    assert row(db, "promo").state == CampaignState.RUNNING
    assert remembered(db) == "FLAGGED"


def test_resume_is_refused_while_meta_has_the_template_paused_and_allowed_after_approval(db: Database) -> None:
    campaign(db, "promo")
    deliver(db, template_status("PAUSED"))
    with pytest.raises(CampaignError, match=r"template promo_image \[en_US\] is PAUSED at Meta"):
        resume(db, "promo")
    deliver(db, template_status("APPROVED", T + 60, reason="NONE"))
    resume(db, "promo")
    assert row(db, "promo").state == CampaignState.RUNNING


def test_the_cli_resume_refuses_with_one_line(cli, db_url_campaign) -> None:  # type: ignore[no-untyped-def]
    db = db_url_campaign
    deliver(db, template_status("DISABLED"))
    result = cli("resume", "promo")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: template promo_image [en_US] is DISABLED at Meta")
    deliver(db, template_status("REINSTATED", T + 60, reason="NONE"))
    assert cli("resume", "promo").exit_code == 0


@pytest.fixture
def db_url_campaign(database_url: str, cli) -> Iterator[Database]:  # type: ignore[no-untyped-def]
    cli("status")  # creates (SQLite) the schema as the commands do
    db = Database.open(database_url, migrate=True)
    campaign(db, "promo")
    yield db
    db.close()


def test_the_latest_template_status_wins_whatever_the_order(db: Database) -> None:
    campaign(db, "promo")
    deliver(db, template_status("APPROVED", T + 60, reason="NONE"))
    deliver(db, template_status("PAUSED", T))  # older news, arriving late
    assert remembered(db) == "APPROVED"
    assert row(db, "promo").state == CampaignState.RUNNING


def test_statuses_in_one_batch_end_with_the_latest(db: Database) -> None:
    campaign(db, "promo")
    deliver(db, template_status("APPROVED", T + 60, reason="NONE"), template_status("PAUSED", T))
    assert remembered(db) == "APPROVED" and row(db, "promo").state == CampaignState.RUNNING


def test_old_news_does_not_pause_a_campaign_resumed_after_it(db: Database) -> None:
    campaign(db, "promo")
    deliver(db, template_status("PAUSED", T))
    deliver(db, template_status("APPROVED", T + 60, reason="NONE"))
    resume(db, "promo")
    deliver(db, template_status("PAUSED", T, entry="waba-again"))  # Meta's redelivery, another body
    replay(db, now=NOW + timedelta(hours=1))
    assert row(db, "promo").state == CampaignState.RUNNING
    assert remembered(db) == "APPROVED"


def test_a_template_webhook_without_time_is_dated_by_its_receipt(db: Database) -> None:
    campaign(db, "promo")
    deliver(db, template_status("PAUSED", None))
    with db.read_session() as session:
        assert session.get_one(TemplateStatus, ("promo_image", "en_US")).event_at is not None
    assert row(db, "promo").state == CampaignState.PAUSED


# -- sender quality and capability ----------------------------------------------------------------


def test_a_flagged_sender_pauses_its_marketing_campaigns_only(db: Database) -> None:
    known_sender(db)
    known_sender(db, "999", "4930123456")
    campaign(db, "promo", sender=SENDER)
    campaign(db, "unknown_category", category=None, sender=SENDER)
    campaign(db, "receipts", category="utility", sender=SENDER)
    campaign(db, "codes", category="authentication", sender=SENDER)
    campaign(db, "elsewhere", sender="999")
    deliver(db, quality("FLAGGED"))
    assert row(db, "promo").state == CampaignState.PAUSED
    assert "Meta FLAGGED sender 106540352242922 (+15550783881)" in (row(db, "promo").pause_reason or "")
    assert row(db, "unknown_category").state == CampaignState.PAUSED
    assert [row(db, n).state for n in ("receipts", "codes", "elsewhere")] == [CampaignState.RUNNING] * 3


def test_a_flagged_default_sender_pauses_campaigns_without_a_sender(db: Database) -> None:
    known_sender(db, default=True)
    campaign(db, "promo")
    deliver(db, quality("DOWNGRADE", current_limit="TIER_1K"))
    assert row(db, "promo").state == CampaignState.PAUSED


def test_an_unknown_flagged_sender_pauses_marketing_of_every_sender_the_engine_cannot_name(db: Database) -> None:
    known_sender(db, "999", "4930123456")
    campaign(db, "default_sender")
    campaign(db, "unrecorded", sender="555")
    campaign(db, "recorded", sender="999")
    campaign(db, "receipts", category="utility")
    deliver(db, quality("FLAGGED"))
    assert row(db, "default_sender").state == CampaignState.PAUSED
    assert row(db, "unrecorded").state == CampaignState.PAUSED
    assert row(db, "recorded").state == CampaignState.RUNNING
    assert row(db, "receipts").state == CampaignState.RUNNING


def test_an_older_flag_after_unflagged_does_not_pause(db: Database) -> None:
    known_sender(db)
    campaign(db, "promo", sender=SENDER)
    deliver(db, quality("UNFLAGGED", T + 60))
    deliver(db, quality("FLAGGED", T))
    assert row(db, "promo").state == CampaignState.RUNNING


def test_capability_sets_the_daily_budget_of_every_sender(db: Database) -> None:
    known_sender(db)
    deliver(db, capability(2000))
    with db.read_session() as session:
        limits = health.sender_limits(session)
    assert health.limits_for(limits, SENDER).daily_limit == 2000
    assert health.limits_for(limits, "unrecorded").daily_limit == 2000  # the business's limit
    deliver(db, capability(250, T - 60))  # older: ignored
    deliver(db, quality("UPGRADE", T + 60, max_daily_conversations_per_business="TIER_UNLIMITED"))
    with db.read_session() as session:
        sender = session.get_one(Sender, SENDER)
        assert (sender.messaging_limit, sender.daily_limit) == ("TIER_UNLIMITED", None)


def test_webhooks_applied_twice_change_nothing_more(db: Database) -> None:
    known_sender(db)
    deliver(db, capability(10000), quality("THROUGHPUT_UPGRADE"))
    with db.read_session() as session:
        before = [(s.phone_number_id, s.daily_limit, s.mps, s.quality_event) for s in session.scalars(select(Sender))]
    replay(db, now=NOW + timedelta(hours=1))
    with db.read_session() as session:
        after = [(s.phone_number_id, s.daily_limit, s.mps, s.quality_event) for s in session.scalars(select(Sender))]
    assert after == before and (SENDER, 10000, 1000, "THROUGHPUT_UPGRADE") in after


# -- the dispatcher -----------------------------------------------------------------------------------


def _worker(db: Database, config: DispatchConfig) -> Dispatcher:
    worker = Dispatcher(db, lambda connections: None, config, worker_id="w1")  # type: ignore[arg-type,return-value]
    worker._campaigns = {c.id: c for c in worker._running(None, NOW)}
    return worker


def test_throughput_upgrade_raises_the_cap_but_not_over_an_explicit_campaign_mps(db: Database) -> None:
    known_sender(db)
    campaign(db, "promo", sender=SENDER)
    deliver(db, quality("THROUGHPUT_UPGRADE", current_limit="TIER_UNLIMITED"))
    assert _worker(db, DispatchConfig(mps=80, mps_explicit=False))._cap(SENDER) == 1000
    assert _worker(db, DispatchConfig(mps=80, mps_explicit=True))._cap(SENDER) == 80
    explicit = load_settings({"CAMPAIGN_MPS": "80"}, dotenv_path=None)
    assert DispatchConfig.from_settings(explicit).mps_explicit
    assert not DispatchConfig.from_settings(load_settings({}, dotenv_path=None)).mps_explicit


def test_the_claim_budget_is_meta_s_limit_unless_campaign_daily_unique_limit_is_set(db: Database) -> None:
    known_sender(db)
    campaign(db, "promo", sender=SENDER)
    deliver(db, capability(250))
    worker = _worker(db, DispatchConfig(default_sender=SENDER))
    assert worker._daily_limit(list(worker._campaigns.values())) == 250
    capped = _worker(db, DispatchConfig(default_sender=SENDER, daily_unique_limit=40))
    assert capped._daily_limit(list(capped._campaigns.values())) == 40


# -- campaign sender and launch ------------------------------------------------------------------------


def _sandbox(**health: Any) -> SandboxServer:
    config = SandboxConfig(access_token=TOKEN, phone_number_id=SENDER, waba_id=WABA, latency_ms=(0, 1), seed=3,
                           health=SandboxHealth(**health))
    return SandboxServer(config)


def test_campaign_sender_json_reads_meta_and_stores_the_budget(cli) -> None:  # type: ignore[no-untyped-def]
    with _sandbox(whatsapp_business_manager_messaging_limit="TIER_10K", quality_rating="YELLOW") as sandbox:
        env = {"WA_API_BASE_URL": sandbox.url, "WA_ACCESS_TOKEN": TOKEN, "WA_PHONE_NUMBER_ID": SENDER}
        result = cli("sender", "--json", env=env)
        with_limit = cli("sender", "--json", env={**env, "CAMPAIGN_DAILY_UNIQUE_LIMIT": "500"})
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["status"], answer["quality_rating"], answer["messaging_limit"]) == ("CONNECTED", "YELLOW", "TIER_10K")
    assert (answer["throughput"], answer["daily_budget"]) == ("STANDARD", 10000)
    assert (json.loads(with_limit.stdout)["daily_budget"], json.loads(with_limit.stdout)["budget_source"]) == (
        500, "CAMPAIGN_DAILY_UNIQUE_LIMIT")
    gone = cli("sender", "--json", env=env)  # the sandbox has stopped: one error line, no traceback
    assert gone.exit_code == 1 and gone.stderr.startswith(f"error: cannot read the health of sender {SENDER}")


def test_launch_refuses_a_disconnected_sender(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "r.csv").write_text("phone\n+4915123000001\n", encoding="utf-8")
    assert cli("create", "hello", "--template", "hello_world", "--language", "en_US").exit_code == 0
    assert cli("import", "hello", "r.csv").exit_code == 0
    with _sandbox(status="DISCONNECTED") as sandbox:
        env = {"WA_API_BASE_URL": sandbox.url, "WA_ACCESS_TOKEN": TOKEN, "WA_PHONE_NUMBER_ID": SENDER,
               "WA_BUSINESS_ACCOUNT_ID": WABA}
        result = cli("launch", "hello", "--detach", env=env)
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"error: sender {SENDER} is DISCONNECTED at Meta, not CONNECTED: it cannot send "
                                     f"(`campaign sender {SENDER}` shows its health)")
    assert json.loads(cli("status", "hello", "--json").stdout)["state"] == "draft"


def test_launch_warns_on_a_red_sender_and_goes_on(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "r.csv").write_text("phone\n+4915123000001\n", encoding="utf-8")
    cli("create", "hello", "--template", "hello_world", "--language", "en_US")
    cli("import", "hello", "r.csv")
    with _sandbox(quality_rating="RED") as sandbox:
        env = {"WA_API_BASE_URL": sandbox.url, "WA_ACCESS_TOKEN": TOKEN, "WA_PHONE_NUMBER_ID": SENDER}
        result = cli("launch", "hello", "--detach", env=env)
    assert result.exit_code == 0, result.stderr
    assert f"warning: sender {SENDER} has quality rating RED" in result.stderr


def test_launch_goes_on_with_a_warning_when_the_sender_cannot_be_read() -> None:
    warnings: list[str] = []
    with _sandbox() as sandbox:
        settings = Settings(api_base_url=sandbox.url, api_version="v21.0", access_token=TOKEN)
        health.preflight(None, settings, "not-our-number", now=NOW, warn=warnings.append)  # type: ignore[arg-type]
    assert len(warnings) == 1 and warnings[0].startswith("could not read the health of sender not-our-number")
