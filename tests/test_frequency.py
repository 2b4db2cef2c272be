"""The marketing frequency cap (CAMPAIGN_MARKETING_FREQUENCY, e.g. `2/7d`): no recipient gets
more than N marketing templates in any moving period, across campaigns and workers; the excess
is `skipped` with its reason. The setting's parser (pure), the claim's decision on a fake
clock (both databases), two workers and three campaigns against the sandbox, and the estimate."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

sys.path.insert(0, str(Path(__file__).parent))

from dispatch_helpers import phones, seed  # noqa: E402
from meta_helpers import Meta, campaign, meta, settled, work_until  # noqa: E402,F401

from campaign import campaigns, estimate, policy  # noqa: E402
from campaign.cli import main  # noqa: E402
from campaign.clock import FakeClock, utcnow  # noqa: E402
from campaign.config import load_settings  # noqa: E402
from campaign.db import Database  # noqa: E402
from campaign.exceptions import CampaignError  # noqa: E402
from campaign.models import Contact, Message  # noqa: E402
from campaign.outbox import Outbox, Results  # noqa: E402
from campaign.policy import MarketingFrequency, parse_marketing_frequency  # noqa: E402

DAY = timedelta(days=1)
CAP = MarketingFrequency(2, 7 * DAY)
REASON = "frequency_cap: 2 marketing templates in the last 7 days (CAMPAIGN_MARKETING_FREQUENCY=2/7d)"


# -- the setting -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "count", "period"), [
    ("2/7d", 2, 7 * DAY), ("1/36h", 1, timedelta(hours=36)), ("3/2w", 3, 14 * DAY), (" 2 / 7D ", 2, 7 * DAY),
    ("1/1h", 1, timedelta(hours=1)), ("10/366d", 10, 366 * DAY),
])
def test_the_setting_reads_a_count_per_days_hours_or_weeks(text: str, count: int, period: timedelta) -> None:
    assert parse_marketing_frequency(text) == MarketingFrequency(count, period)


@pytest.mark.parametrize("text", ["2/7", "2", "7d", "two/7d", "2/7dd", "2/1.5d", "-1/7d", "2/7m", "0/7d", "2/0d",
                                  "2/367d", "2/999999999w"])
def test_a_bad_setting_is_one_error_line_naming_it(text: str) -> None:
    with pytest.raises(CampaignError, match=r"^CAMPAIGN_MARKETING_FREQUENCY=.*e\.g\. 2/7d") as caught:
        load_settings({"CAMPAIGN_MARKETING_FREQUENCY": text}, None)
    assert "\n" not in str(caught.value)


def test_the_cap_is_off_by_default_and_read_from_the_environment_or_dotenv(tmp_path: Path) -> None:
    assert load_settings({}, None).marketing_frequency is None
    assert load_settings({"CAMPAIGN_MARKETING_FREQUENCY": " "}, None).marketing_frequency is None
    dotenv = tmp_path / ".env"
    dotenv.write_text("CAMPAIGN_MARKETING_FREQUENCY=1/36h\n", encoding="utf-8")
    assert load_settings({}, dotenv).marketing_frequency == MarketingFrequency(1, timedelta(hours=36))
    assert load_settings({"CAMPAIGN_MARKETING_FREQUENCY": "2/1w"}, dotenv).marketing_frequency == CAP


def test_a_bad_setting_stops_the_command_with_exit_1_and_no_traceback(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the working directory's
    result = CliRunner().invoke(main, ["status"], env={"CAMPAIGN_MARKETING_FREQUENCY": "2 per week"})
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "error: CAMPAIGN_MARKETING_FREQUENCY='2 per week' is not N/<days>d, N/<hours>h or N/<weeks>w, "
        "e.g. 2/7d: at most 2 marketing templates in any 7 days"]


def test_the_reason_names_the_cap_as_set_in_its_canonical_spelling() -> None:
    assert CAP.reason == REASON
    assert parse_marketing_frequency("1/24h").reason == (
        "frequency_cap: 1 marketing template in the last 1 day (CAMPAIGN_MARKETING_FREQUENCY=1/1d)")
    assert parse_marketing_frequency("3/36h").reason.startswith("frequency_cap: 3 marketing templates in the last 36 hours")


# -- the claim's decision, on a fake clock -----------------------------------------------------


def send_now(db: Database, clock: FakeClock, name: str, *, cap: MarketingFrequency | None = CAP,
             outcome: str = "sent") -> None:
    """Claim campaign `name` as a worker does and record what was claimed as `outcome`
    (`sent`, `failed`, or `in_doubt`: the request left and no answer came)."""
    outbox = Outbox(db, "worker")
    with db.session() as session:
        running = campaigns.running(session, [name], clock.now())
    claimed = outbox.claim(running, 100, clock.now(), pair_interval=0.0, marketing_frequency=cap)
    results = Results()
    outbox.mark_in_flight([m.id for m in claimed], clock.now())  # as every request is, before it leaves
    for m in claimed:
        if outcome == "sent":
            results.add_sent(m.id, m.contact_id, f"wamid.{m.id}", None, clock.now(), 0.0)
        elif outcome == "failed":
            results.add_failed(m.id, m.contact_id, 131000, "Something went wrong", None, clock.now())
        else:
            results.add_in_doubt(m.id, m.contact_id, clock.now(), clock.now() + timedelta(minutes=10), 0.0)
    outbox.record(results)


def outcomes(db: Database, name: str) -> dict[str, tuple[str, str | None, str | None]]:
    """Phone -> (state, kind, error_title) of campaign `name`'s messages."""
    with db.read_session() as session:
        campaign_id = campaigns.get(session, name).id
        rows = session.execute(select(Contact.phone, Message.state, Message.kind, Message.error_title)
                               .join(Contact, Contact.id == Message.contact_id).where(Message.campaign_id == campaign_id))
        return {phone: (state, kind, title) for phone, state, kind, title in rows}


SENT = ("sent", "template", None)
CAPPED = ("skipped", None, REASON)


def test_the_third_marketing_template_in_seven_days_is_skipped_with_the_reason(db: Database) -> None:
    clock, people = FakeClock(), phones(2)
    for name in ("monday", "tuesday", "wednesday"):
        seed(db, name, people, category="marketing")
    send_now(db, clock, "monday")
    clock.advance(DAY)
    send_now(db, clock, "tuesday")
    clock.advance(DAY)
    send_now(db, clock, "wednesday")
    assert outcomes(db, "tuesday") == {p: SENT for p in people}
    assert outcomes(db, "wednesday") == {p: CAPPED for p in people}


def test_without_the_setting_nobody_is_capped(db: Database) -> None:
    clock, people = FakeClock(), phones(2)
    for name in ("monday", "tuesday", "wednesday"):
        seed(db, name, people, category="marketing")
        send_now(db, clock, name, cap=None)
        clock.advance(DAY)
    assert outcomes(db, "wednesday") == {p: SENT for p in people}


def test_the_period_moves_a_template_stops_counting_seven_days_after_it_was_sent(db: Database) -> None:
    clock, people = FakeClock(), phones(1)
    for name in ("day0", "day3", "almost-day7", "day7", "day8"):
        seed(db, name, people, category="marketing")
    send_now(db, clock, "day0")
    clock.advance(3 * DAY)
    send_now(db, clock, "day3")
    clock.advance(4 * DAY - timedelta(minutes=1))
    send_now(db, clock, "almost-day7")  # day0's template is a minute short of 7 days old
    assert outcomes(db, "almost-day7") == {people[0]: CAPPED}
    clock.advance(timedelta(minutes=2))
    send_now(db, clock, "day7")  # ...and now it is older: room for one more
    assert outcomes(db, "day7") == {people[0]: SENT}
    clock.advance(DAY)
    send_now(db, clock, "day8")  # day3's and day7's are both within the last 7 days
    assert outcomes(db, "day8") == {people[0]: CAPPED}


def test_utility_templates_are_neither_counted_nor_capped(db: Database) -> None:
    clock, people = FakeClock(), phones(2)
    for name in ("receipt", "shipping"):
        seed(db, name, people, category="utility")
    for name in ("sale", "clearance"):
        seed(db, name, people, category="marketing")
    seed(db, "delivery", people, category="utility")
    for name in ("receipt", "shipping", "sale", "clearance", "delivery"):
        send_now(db, clock, name)
        clock.advance(timedelta(hours=1))
    assert outcomes(db, "clearance") == {p: SENT for p in people}  # two utility before did not count
    assert outcomes(db, "delivery") == {p: SENT for p in people}  # two marketing before do not stop utility


def test_free_form_text_inside_the_window_is_neither_counted_nor_capped(db: Database) -> None:
    clock, people = FakeClock(), phones(2)
    wrote, silent = people
    with db.session() as session:
        session.execute(Contact.__table__.insert(), [{"phone": wrote, "last_inbound_at": clock.now()}])
    for name in ("chat-1", "chat-2", "chat-3"):
        seed(db, name, people, category="marketing", text="Hi {name}")
    for name in ("chat-1", "chat-2", "chat-3"):
        send_now(db, clock, name)
        clock.advance(timedelta(hours=1))
    assert outcomes(db, "chat-3") == {wrote: ("sent", "text", None), silent: CAPPED}
    seed(db, "promo", people, category="marketing")  # a template, and `wrote` got none yet
    send_now(db, clock, "promo")
    assert outcomes(db, "promo") == {wrote: SENT, silent: CAPPED}


def test_a_failed_template_does_not_count_but_one_that_may_have_reached_them_does(db: Database) -> None:
    clock, people = FakeClock(), phones(1)
    for name in ("failed", "in-doubt", "sent", "next"):
        seed(db, name, people, category="marketing")
    send_now(db, clock, "failed", outcome="failed")
    clock.advance(timedelta(hours=1))
    send_now(db, clock, "in-doubt", outcome="in_doubt")  # still `sending`: it may have reached them
    clock.advance(timedelta(hours=1))
    send_now(db, clock, "sent")
    assert outcomes(db, "sent") == {people[0]: SENT}  # the failed one left room
    clock.advance(timedelta(hours=1))
    send_now(db, clock, "next")
    assert outcomes(db, "next") == {people[0]: CAPPED}


def test_a_message_sent_back_by_metas_marketing_limit_is_not_capped_by_its_own_first_try(db: Database) -> None:
    clock, people = FakeClock(), phones(1)
    seed(db, "promo", people, category="marketing")
    one = MarketingFrequency(1, 7 * DAY)
    send_now(db, clock, "promo", cap=one)
    with db.session() as session:  # 131049 came back: queued again to wait (reconcile._REQUEUE)
        session.execute(update(Message).values(state="queued", wamid=None, sending_at=None, marketing_waits=1))
    clock.advance(DAY)
    send_now(db, clock, "promo", cap=one)
    assert outcomes(db, "promo") == {people[0]: SENT}


def test_three_campaigns_claimed_together_send_two_and_skip_one_per_person(db: Database) -> None:
    clock, people = FakeClock(), phones(5)
    names = ["a", "b", "c"]
    for name in names:
        seed(db, name, people, category="marketing")
    for _ in range(4):  # one message per person per claim: the others wait for the next
        outbox = Outbox(db, "worker")
        with db.session() as session:
            running = campaigns.running(session, names, clock.now())
        claimed = outbox.claim(running, 100, clock.now(), pair_interval=0.0, marketing_frequency=CAP)
        results = Results()
        for m in claimed:
            results.add_sent(m.id, m.contact_id, f"wamid.{m.id}", None, clock.now(), 0.0)
        outbox.record(results)
        clock.advance(timedelta(seconds=1))
    per_person = Counter((phone, outcome) for name in names for phone, outcome in outcomes(db, name).items())
    assert per_person == Counter({**{(p, SENT): 2 for p in people}, **{(p, CAPPED): 1 for p in people}})


# -- two workers, three campaigns, against the sandbox -----------------------------------------


def test_two_workers_and_three_campaigns_never_send_anyone_more_than_the_cap(meta: Meta, cli) -> None:  # type: ignore[no-untyped-def]
    people = [f"+4915123{i:06d}" for i in range(3000, 3030)]
    promos = [campaign(meta, name, people) for name in ("spring", "summer", "autumn")]
    receipts = campaign(meta, "receipts", people, template="order_update", category="utility")
    settings = meta.settings.with_overrides(marketing_frequency=CAP)
    work_until(meta, lambda: all(settled(meta.db, c)() for c in [*promos, receipts]), workers=2, settings=settings,
               timeout=30)

    accepted = [(e["to"], e["template_name"]) for e in meta.ledger() if e["outcome"] == "accepted"]
    marketing = Counter(to for to, template in accepted if template == "spring_sale")
    assert marketing == {p: 2 for p in people}  # the cap, and no more skipped than it needs
    assert Counter(to for to, template in accepted if template == "order_update") == {p: 1 for p in people}

    skipped = []
    for name in ("spring", "summer", "autumn"):
        report = cli("report", name, "-o", "-")
        assert report.exit_code == 0, report.output
        skipped += [row for row in csv.DictReader(io.StringIO(report.output)) if row["status"] == "skipped"]
    assert sorted(row["phone"] for row in skipped) == sorted(people)
    assert {row["error_title"] for row in skipped} == {REASON}
    reasons: Counter[str] = Counter()
    for name in ("spring", "summer", "autumn"):
        figures = json.loads(cli("report", name, "--summary", "--json").output)
        reasons.update({r["reason"]: r["count"] for r in figures["skipped"]})
    assert reasons == {REASON: len(people)}


# -- the estimate ------------------------------------------------------------------------------


def history(db: Database, name: str, category: str, sent: dict[str, list[timedelta]], *,
            state: str = "delivered") -> None:
    """Past campaigns of `category`, one per template: each phone got a template (now in
    `state`) each of its `ago`s before now."""
    now = utcnow()
    with db.session() as session:
        for i, (phone, agos) in enumerate(sent.items()):
            contact = session.scalar(select(Contact).where(Contact.phone == phone)) or Contact(phone=phone)
            session.add(contact)
            session.flush()
            for k, ago in enumerate(agos):
                past = campaigns.create(session, campaigns.CampaignSpec(f"{name}-{i}-{k}", "old", "en_US", [],
                                                                        category=category))
                session.add(Message(campaign_id=past.id, contact_id=contact.id, state=state, kind="template",
                                    sent_at=now - ago, sending_at=now - ago))


def test_estimate_counts_who_the_cap_would_skip_if_sent_now(cli, database_url: str) -> None:  # type: ignore[no-untyped-def]
    capped, once, aged, utility, failed, fresh = phones(6, start=500)
    db = Database.open(database_url)
    history(db, "promo", "marketing", {capped: [DAY, 2 * DAY], once: [DAY], aged: [DAY, 8 * DAY]})
    history(db, "receipt", "utility", {utility: [DAY, 2 * DAY]})
    history(db, "bounced", "marketing", {failed: [DAY, 2 * DAY]}, state="failed")
    seed(db, "new-promo", [capped, once, aged, utility, failed, fresh], category="marketing", running=False)
    seed(db, "new-receipt", [capped, once], category="utility", running=False)
    db.close()

    env = {"CAMPAIGN_MARKETING_FREQUENCY": "2/7d"}
    data = json.loads(cli("estimate", "new-promo", "--json", env=env).output)
    assert data["skipped"] == {"frequency_cap": 1} and data["to_send"] == 5
    assert data["marketing_frequency"] == "2/7d"
    table = cli("estimate", "new-promo", env=env)
    assert table.exit_code == 0
    assert "Skipped by the rules: 1" in table.output and "frequency cap" in " ".join(table.output.split())
    assert json.loads(cli("estimate", "new-promo", "--json").output)["skipped"] == {}  # no cap set
    assert json.loads(cli("estimate", "new-receipt", "--json", env=env).output)["skipped"] == {}


def test_estimate_does_not_cap_free_form_text_inside_the_window() -> None:
    groups = [estimate.Group("DE", 3, frequency_capped=True), estimate.Group("DE", 2, in_window=True, frequency_capped=True)]
    card = estimate.parse_card({"name": "c", "currency": "USD", "effective_date": "2026-01-01", "source": "test",
                                "markets": {"other": {"marketing": 0.1, "utility": 0.01, "authentication": 0.01}}})
    figures = estimate.estimate(groups, card, category="marketing", has_text=True, marketing_frequency=CAP)
    assert figures.skipped == {"frequency_cap": 3} and figures.to_send == 2 and figures.free == 2
    assert policy.FREQUENCY_CAP in estimate.SKIP_REASONS
