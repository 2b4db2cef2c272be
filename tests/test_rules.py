"""Meta's rules end to end: the sandbox as Meta, its webhooks through the receiver, a worker
between them, and every assertion on what reached the sandbox's ledger."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from campaign import campaigns, sending
from campaign.clock import utcnow
from campaign.models import Campaign, Contact, Message

sys.path.insert(0, str(Path(__file__).parent))
from meta_helpers import SENDER, Meta, campaign, meta, settled, states, work_until  # noqa: E402,F401


def test_someone_who_wrote_first_gets_the_free_form_text(meta: Meta) -> None:
    wrote, silent = "+4915123000101", "+4915123000102"
    campaign_id = campaign(meta, "chat", [wrote, silent], template="order_update", category="utility",
                           text="Hi {name}, your order {order} is ready")
    meta.sandbox.open_window(wrote)
    with meta.db.session() as session:  # the engine learned it from the inbound webhook; never wrote to them
        session.execute(update(Contact).where(Contact.phone == wrote).values(last_inbound_at=utcnow() - timedelta(hours=1)))
    work_until(meta, settled(meta.db, campaign_id))
    kinds = {e["to"]: e["type"] for e in meta.ledger() if e["outcome"] == "accepted"}
    assert kinds == {wrote: "text", silent: "template"}


def test_the_marketing_limit_waits_and_the_message_is_delivered_on_the_second_try(meta: Meta) -> None:
    limited, free = "+4915123000111", "+4915123000112"
    meta.sandbox.patch_config(marketing_limited=[limited], marketing_limited_times=1)
    campaign_id = campaign(meta, "promo", [limited, free])

    def second_send_done() -> bool:
        return meta.accepted_to().count(limited) == 2 and states(meta.db, campaign_id).get("queued", 0) == 0 \
            and states(meta.db, campaign_id).get("sending", 0) == 0

    work_until(meta, second_send_done)
    assert meta.accepted_to().count(free) == 1
    with meta.db.read_session() as session:
        message = session.scalars(select(Message).join(Contact).where(Contact.phone == limited)).one()
    assert message.marketing_waits == 1 and message.state in ("sent", "delivered")


def test_marketing_never_goes_to_united_states_numbers_but_canada_and_jamaica_get_it(meta: Meta) -> None:
    us, canada, jamaica = "+12025550143", "+14165550143", "+18765550143"
    campaign_id = campaign(meta, "promo", [us, canada, jamaica])
    work_until(meta, settled(meta.db, campaign_id))
    assert sorted(meta.accepted_to()) == sorted([canada, jamaica])
    with meta.db.read_session() as session:
        skipped = session.scalars(select(Message.error_title).join(Contact).where(Contact.phone == us)).one()
    assert "United States" in (skipped or "")


def test_a_known_unreachable_number_is_skipped_by_the_next_campaign(meta: Meta) -> None:
    gone, here = "+4915123000121", "+4915123000122"
    meta.sandbox.patch_config(not_on_whatsapp=[gone])
    first = campaign(meta, "first", [gone, here], template="order_update", category="utility")
    work_until(meta, lambda: states(meta.db, first).get("failed", 0) == 1)
    second = campaign(meta, "second", [gone, here], template="order_update", category="utility")
    work_until(meta, settled(meta.db, second))
    assert meta.accepted_to().count(gone) <= 1  # only the first campaign tried it
    assert states(meta.db, second).get("skipped", 0) == 1


def test_a_token_error_on_one_worker_pauses_the_senders_campaigns_on_every_worker(meta: Meta) -> None:
    one = campaign(meta, "one", ["+4915123000131"], template="order_update", category="utility")
    two = campaign(meta, "two", ["+4915123000132"], template="order_update", category="utility",
                   phone_number_id=SENDER)  # named explicitly: the same number as WA_PHONE_NUMBER_ID
    broken = meta.settings.with_overrides(access_token="expired-token")

    def both_paused() -> bool:
        with meta.db.read_session() as session:
            return {campaigns.get(session, n).state for n in ("one", "two")} == {"paused"}

    work_until(meta, both_paused, settings=broken)
    with meta.db.read_session() as session:
        reasons = {campaigns.get(session, n).pause_code for n in ("one", "two")}
    assert reasons == {190} and meta.accepted_to() == []
    assert states(meta.db, one) == {"queued": 1} and states(meta.db, two) == {"queued": 1}
    with meta.db.session() as session:
        assert sorted(campaigns.resume_sender(session, SENDER, SENDER)) == ["one", "two"]


def test_a_template_paused_mid_campaign_stops_its_sends_within_5_s_and_nothing_else(meta: Meta) -> None:
    spring = campaign(meta, "spring", [f"+4915123{i:06d}" for i in range(1000, 1300)], mps=10)
    orders = campaign(meta, "orders", [f"+4915123{i:06d}" for i in range(2000, 2300)], template="order_update",
                      category="utility", mps=10)  # 20 MPS in all: each runs for half a minute
    control: dict[str, float] = {}

    def paused_then_watched() -> bool:
        if "at" not in control:
            if sum(e["template_name"] == "spring_sale" for e in meta.ledger() if e["outcome"] == "accepted") >= 20:
                control["at"] = time.time()
                meta.sandbox.template_status("spring_sale", "en_US", "PAUSED", reason="LOW_QUALITY")
            return False
        return time.time() > control["at"] + 6.5

    work_until(meta, paused_then_watched, timeout=14)
    at, ledger = control["at"], meta.ledger()
    late = [e for e in ledger if e["template_name"] == "spring_sale" and e["wall"] > at + 5]
    assert late == [], f"{len(late)} spring_sale requests more than 5 s after the pause, the last at +{late[-1]['wall'] - at:.1f} s"
    after = [e["wall"] - at for e in ledger if e["template_name"] == "order_update" and e["outcome"] == "accepted"
             and e["wall"] > at]
    assert len(after) >= 30 and max(after) > 5, "order_update stopped with the paused template"
    with meta.db.read_session() as session:
        paused, running = session.get(Campaign, spring), session.get(Campaign, orders)
        assert paused is not None and running is not None
        assert paused.state == "paused" and "spring_sale" in (paused.pause_reason or ""), paused.pause_reason
        assert running.state == "running" and running.pause_reason is None
    assert states(meta.db, orders).get("queued", 0) > 0  # still going when the test stopped it


def test_131050_blocks_marketing_but_not_utility(meta: Meta) -> None:
    opted, other = "+4915123000141", "+4915123000142"
    meta.sandbox.patch_config(marketing_opted_out=[opted])
    first = campaign(meta, "promo", [opted, other])
    work_until(meta, lambda: states(meta.db, first).get("failed", 0) == 1 and settled(meta.db, first)())
    with meta.db.read_session() as session:
        failure = session.execute(select(Message.state, Message.error_code).join(Contact)
                                  .where(Message.campaign_id == first, Contact.phone == opted)).one()
    assert tuple(failure) == ("failed", 131050)
    entry = next(e for e in meta.ledger() if e["to"] == opted)
    assert entry["outcome"] == "accepted" and entry["failure_code"] == 131050  # accepted, then failed by webhook

    receipt = campaign(meta, "receipt", [opted, other], template="order_update", category="utility")
    work_until(meta, settled(meta.db, receipt))
    later = campaign(meta, "promo-2", [opted, other])
    work_until(meta, settled(meta.db, later))

    sent = [(e["to"], e["template_name"]) for e in meta.ledger() if e["outcome"] == "accepted"]
    assert sent.count((opted, "order_update")) == 1  # the utility template still reaches them
    assert sent.count((opted, "spring_sale")) == 1  # only the first campaign tried marketing
    assert sent.count((other, "spring_sale")) == 2 and sent.count((other, "order_update")) == 1
    assert states(meta.db, receipt).get("skipped", 0) == 0
    assert states(meta.db, later).get("skipped", 0) == 1


def test_the_breaker_pauses_a_campaign_whose_numbers_are_mostly_unreachable(meta: Meta) -> None:
    numbers = [f"+49151230002{i:02d}" for i in range(60)]
    meta.sandbox.patch_config(not_on_whatsapp=numbers[::3] + numbers[1::3])  # two in three are gone
    campaign_id = campaign(meta, "stale", numbers, template="order_update", category="utility")

    def paused() -> bool:
        with meta.db.read_session() as session:
            return campaigns.get(session, "stale").state == "paused"

    work_until(meta, paused, mps=10)
    with meta.db.read_session() as session:
        reason = campaigns.get(session, "stale").pause_reason or ""
    assert "failure-rate breaker" in reason and "131026" in reason
    assert states(meta.db, campaign_id).get("queued", 0) > 0  # stopped before the end of the list
