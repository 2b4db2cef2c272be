"""The outbox on a fake clock: leases, the in-doubt grace, retry and pair due times, the
messaging limit's budget. Exact times, no sleeping, on both databases."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).parent))

from dispatch_helpers import phones, seed  # noqa: E402

from campaign import campaigns  # noqa: E402
from campaign.campaigns import RunningCampaign  # noqa: E402
from campaign.clock import FakeClock  # noqa: E402
from campaign.db import Database  # noqa: E402
from campaign.models import Message  # noqa: E402
from campaign.outbox import PAIR_MARGIN, Claimed, Outbox, Results  # noqa: E402

LEASE = timedelta(seconds=30)
GRACE = timedelta(minutes=10)


def running(db: Database, clock: FakeClock) -> list[RunningCampaign]:
    with db.session() as session:
        return campaigns.running(session, None, clock.now())


def claim(outbox: Outbox, db: Database, clock: FakeClock, limit: int = 100, *, pair_interval: float = 0.0,
          daily_unique_limit: int | None = None) -> list[Claimed]:
    return outbox.claim(running(db, clock), limit, clock.now(), pair_interval=pair_interval,
                        daily_unique_limit=daily_unique_limit)


def message_states(db: Database) -> dict[int, str]:
    with db.read_session() as session:
        return dict(session.execute(select(Message.id, Message.state).order_by(Message.id)).all())


def sent(outbox: Outbox, clock: FakeClock, messages: list[Claimed], *, pair_interval: float = 0.0) -> None:
    results = Results()
    for m in messages:
        results.add_sent(m.id, m.contact_id, f"wamid.{m.id}", None, clock.now(), pair_interval)
    outbox.record(results)


def test_a_claim_holds_its_messages_until_the_lease_ends_and_not_a_moment_longer(db: Database) -> None:
    clock = FakeClock()
    seed(db, "spring", phones(3))
    first, second = Outbox(db, "first", lease=LEASE), Outbox(db, "second", lease=LEASE)
    assert len(claim(first, db, clock)) == 3
    clock.advance(LEASE - timedelta(seconds=1))
    assert first.recover(clock.now(), GRACE) == (0, 0)
    assert claim(second, db, clock) == []
    clock.advance(timedelta(seconds=2))
    assert first.recover(clock.now(), GRACE) == (3, 0)  # none had left: queued at once
    assert [m.id for m in claim(second, db, clock)] == list(message_states(db))


def test_a_message_that_may_have_left_waits_the_whole_grace_period(db: Database) -> None:
    clock = FakeClock()
    seed(db, "spring", phones(2))
    outbox = Outbox(db, "worker", lease=LEASE)
    in_flight, never_left = claim(outbox, db, clock)
    assert outbox.mark_in_flight([in_flight.id], clock.now()) == {in_flight.id}
    clock.advance(LEASE + timedelta(seconds=1))  # the worker died mid-request
    assert outbox.recover(clock.now(), GRACE) == (1, 0)
    assert message_states(db) == {in_flight.id: "sending", never_left.id: "queued"}
    clock.advance(GRACE - LEASE - timedelta(seconds=2))
    assert outbox.recover(clock.now(), GRACE) == (0, 0)
    assert message_states(db)[in_flight.id] == "sending"
    clock.advance(timedelta(seconds=2))
    assert outbox.recover(clock.now(), GRACE) == (0, 1)
    assert message_states(db)[in_flight.id] == "queued"


def test_a_retry_is_claimed_at_its_due_time_not_before(db: Database) -> None:
    clock = FakeClock()
    seed(db, "spring", phones(1))
    outbox = Outbox(db, "worker", lease=LEASE)
    (message,) = claim(outbox, db, clock)
    outbox.mark_in_flight([message.id], clock.now())
    retry = Results()
    retry.add_retry(message.id, message.contact_id, clock.now() + timedelta(seconds=8), code=131000, title="try later")
    outbox.record(retry)
    clock.advance(timedelta(seconds=7.9))
    assert claim(outbox, db, clock) == []
    clock.advance(timedelta(seconds=0.1))
    (again,) = claim(outbox, db, clock)
    assert again.id == message.id and again.attempts == 1


def test_a_recipient_of_two_campaigns_gets_the_second_message_after_the_pair_interval(db: Database) -> None:
    clock = FakeClock()
    shared = phones(1)
    seed(db, "first", shared)
    seed(db, "second", shared)
    outbox = Outbox(db, "worker", lease=LEASE)
    claimed = claim(outbox, db, clock, pair_interval=6.0)
    assert len(claimed) == 1  # one message per person per claim
    clock.advance(timedelta(seconds=1))
    sent(outbox, clock, claimed, pair_interval=6.0)
    due = clock.now() + timedelta(seconds=6.0 + PAIR_MARGIN)
    clock.advance(timedelta(seconds=6.0))
    assert claim(outbox, db, clock, pair_interval=6.0) == []
    clock.advance(due - clock.now())
    (second,) = claim(outbox, db, clock, pair_interval=6.0)
    assert second.id != claimed[0].id


def test_the_daily_budget_counts_each_person_once_and_rolls_after_24_hours(db: Database) -> None:
    clock = FakeClock()
    seed(db, "first", phones(2))
    seed(db, "second", phones(4))  # two people in both campaigns
    outbox = Outbox(db, "worker", lease=LEASE)
    first = claim(outbox, db, clock, daily_unique_limit=3)
    assert len({m.contact_id for m in first}) == 3
    sent(outbox, clock, first)
    clock.advance(timedelta(minutes=2))
    more = claim(outbox, db, clock, daily_unique_limit=3)
    # Only people already reached cost nothing more: the shared recipients' second messages.
    assert {m.contact_id for m in more} <= {m.contact_id for m in first}
    sent(outbox, clock, more)
    clock.advance(timedelta(minutes=2))
    assert claim(outbox, db, clock, daily_unique_limit=3) == []
    clock.advance(timedelta(hours=24))
    rest = claim(outbox, db, clock, daily_unique_limit=3)
    assert rest and not {m.contact_id for m in rest} & {m.contact_id for m in first}
    sent(outbox, clock, rest)
    assert sorted(set(message_states(db).values())) == ["sent"]


def test_messages_given_back_unsent_are_queued_with_their_attempt_returned(db: Database) -> None:
    clock = FakeClock()
    seed(db, "spring", phones(2))
    outbox = Outbox(db, "worker", lease=LEASE)
    marked, unmarked = claim(outbox, db, clock)
    outbox.mark_in_flight([marked.id], clock.now())
    Outbox(db, "another", lease=LEASE).return_unsent([marked.id], clock.now())  # not its lease: untouched
    assert message_states(db)[marked.id] == "sending"
    outbox.return_unsent([marked.id, unmarked.id], clock.now())
    again = claim(outbox, db, clock)
    assert {m.id: m.attempts for m in again} == {marked.id: 0, unmarked.id: 0}


def test_a_marketing_opt_out_skips_marketing_and_lets_utility_through(db: Database) -> None:
    from campaign import suppressions
    from campaign.states import SuppressionScope

    clock = FakeClock()
    number = phones(1)
    seed(db, "promo", number, category="marketing")
    seed(db, "receipt", number, category="utility")
    seed(db, "unsure", number)  # no category yet: an opt-out is never risked
    with db.session() as session:
        suppressions.suppress(session, number, reason="tapped Stop promotions", scope=SuppressionScope.MARKETING)
    outbox = Outbox(db, "worker", lease=LEASE)
    (claimed,) = claim(outbox, db, clock)
    with db.read_session() as session:
        names = dict(session.execute(select(Message.id, Message.campaign_id)).all())
        receipt = campaigns.get(session, "receipt").id
    assert names[claimed.id] == receipt  # the marketing one was skipped; one message per person per claim
    sent(outbox, clock, [claimed])
    clock.advance(1.0)
    assert claim(outbox, db, clock) == []
    assert sorted(message_states(db).values()) == ["sent", "skipped", "skipped"]
