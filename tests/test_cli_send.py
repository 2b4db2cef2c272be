"""`campaign test / launch / pause / resume / cancel / status` as a user runs them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from campaign.models import Message
from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.server import SandboxServer

SENDER, WABA, TOKEN = "106540352242922", "102290129340398", "cli-token"
ROWS = "first_name,phone,order_id\nZoë,+4915123000001,A-1\nJosé,+4915123000002,A-2\nAna,+4915123000003,A-3\n"


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    config = SandboxConfig(access_token=TOKEN, phone_number_id=SENDER, waba_id=WABA, latency_ms=(1, 5), seed=3)
    with SandboxServer(config) as server:
        yield server


@pytest.fixture
def env(sandbox: SandboxServer) -> dict[str, str]:
    return {"WA_API_BASE_URL": sandbox.url, "WA_ACCESS_TOKEN": TOKEN, "WA_PHONE_NUMBER_ID": SENDER,
            "WA_BUSINESS_ACCOUNT_ID": WABA, "CAMPAIGN_PAIR_INTERVAL": "0"}


@pytest.fixture
def spring(cli, tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "r.csv").write_text(ROWS, encoding="utf-8")
    assert cli("create", "spring", "--template", "order_update", "--language", "en_US",
               "--param", "first_name", "--param", "order_id").exit_code == 0
    assert cli("import", "spring", "r.csv").exit_code == 0
    return cli


def test_launch_in_the_foreground_sends_everyone_and_prints_the_summary(spring, env, sandbox: SandboxServer) -> None:  # type: ignore[no-untyped-def]
    result = spring("launch", "spring", env=env)
    assert result.exit_code == 0, result.stderr
    assert "campaign 'spring' is completed: sent 3, failed 0" in result.stdout
    assert "Delivery rate" in result.stdout
    assert sandbox.figures(SENDER).accepted == 3
    status = json.loads(spring("status", "spring", "--json", env=env).stdout)
    assert status["state"] == "completed" and status["counts"]["sent"] == 3


def test_launch_refuses_a_template_that_does_not_match(cli, tmp_path: Path, env) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "r.csv").write_text(ROWS, encoding="utf-8")
    cli("create", "short", "--template", "order_update", "--language", "en_US", "--param", "first_name")
    result = cli("launch", "short", env=env)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: order_update: body.2 (text) is not bound"
    assert json.loads(cli("status", "short", "--json").stdout)["state"] == "draft"


def test_a_test_send_is_not_counted_in_the_campaign(spring, env, sandbox: SandboxServer) -> None:  # type: ignore[no-untyped-def]
    result = spring("test", "spring", "--to", "+44 7911 123456", env=env)
    assert result.exit_code == 0 and result.stdout.startswith("+447911123456: accepted wamid.")
    assert sandbox.figures(SENDER).accepted == 1
    assert json.loads(spring("status", "spring", "--json").stdout)["counts"]["queued"] == 3


def test_detach_pause_resume_and_cancel_move_the_state(spring, env) -> None:  # type: ignore[no-untyped-def]
    assert spring("launch", "spring", "--detach", env=env).stdout.startswith("campaign 'spring' is running")
    assert spring("pause", "spring").exit_code == 0
    assert json.loads(spring("status", "spring", "--json").stdout)["state"] == "paused"
    assert spring("resume", "spring").exit_code == 0
    assert spring("cancel", "spring").stdout.strip() == "cancelled campaign 'spring' (3 queued messages cancelled)"
    again = spring("resume", "spring")
    assert again.exit_code == 1 and again.stderr.strip() == "error: campaign 'spring' is cancelled: cannot resume it"


def test_launch_at_a_future_time_schedules_it(spring, env) -> None:  # type: ignore[no-untyped-def]
    result = spring("launch", "spring", "--at", "2099-01-01T09:00:00+00:00", "--detach", env=env)
    assert result.exit_code == 0
    assert json.loads(spring("status", "spring", "--json").stdout)["state"] == "scheduled"
    bad = spring("launch", "spring", "--at", "next tuesday", env=env)
    assert bad.exit_code == 1 and "--at 'next tuesday' is not an ISO 8601 time" in bad.stderr


def test_templates_lists_every_template_with_what_it_needs_bound(cli, env) -> None:  # type: ignore[no-untyped-def]
    listed = {t["name"]: t for t in json.loads(cli("templates", "--json", env=env).stdout)}
    assert listed["promo_image"]["needs"] == "header(image) body.1 button.0(url) button.1(quick_reply, optional) button.2(quick_reply, optional)"
    assert listed["flash_sale"]["status"] == "PAUSED" and listed["promo_image"]["category"] == "marketing"
    one = cli("templates", "login_code", env=env)
    assert one.exit_code == 0 and "login_code" in one.stdout and "promo_image" not in one.stdout
    missing = cli("templates", "no_such", env=env)
    assert missing.exit_code == 1 and missing.stderr.strip() == "error: template 'no_such' does not exist in this WhatsApp Business Account"


def test_create_refuses_a_bind_it_cannot_read_with_one_line(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("create", "x", "--template", "promo_image", "--language", "en_US", "--bind", "button.zero=order")
    assert result.exit_code == 1 and result.stderr.startswith("error: --bind 'button.zero=order'")
    twice = cli("create", "y", "--template", "order_update", "--language", "en_US", "--param", "a", "--bind", "body.1=b")
    assert twice.exit_code == 1 and "body.1 is bound twice" in twice.stderr


def test_retry_requeues_failed_messages_meta_never_accepted_and_resume_sender_resumes_a_sender_wide_pause(
        spring, env) -> None:  # type: ignore[no-untyped-def]
    from campaign import campaigns
    from campaign.db import Database

    assert spring("launch", "spring", "--detach", env=env).exit_code == 0
    db = Database.open(os.environ["CAMPAIGN_DATABASE_URL"], migrate=False)
    with db.session() as session:
        campaign = campaigns.get(session, "spring")
        ids = [m.id for m in campaign_messages(session, campaign.id)]
        session.execute(update(Message).where(Message.id == ids[0]).values(state="failed", error_code=132012))
        session.execute(update(Message).where(Message.id == ids[1]).values(state="failed", error_code=131026,
                                                                             wamid="wamid.accepted"))
        campaigns.engine_pause(session, campaign, "Meta error 190: token expired", 190)
    assert spring("retry", "spring", "--error", "131026").stdout.startswith("0 failed messages")  # Meta accepted it
    assert spring("retry", "spring").stdout.startswith("1 failed message of campaign 'spring' queued again")
    assert spring("resume", "--sender", env=env).stdout.startswith("resumed 1 campaign: spring")
    assert json.loads(spring("status", "spring", "--json").stdout)["counts"]["queued"] == 2
    db.close()


def campaign_messages(session, campaign_id: int):  # type: ignore[no-untyped-def]
    return session.scalars(select(Message).where(Message.campaign_id == campaign_id).order_by(Message.id)).all()
