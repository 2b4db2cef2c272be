"""The failure-rate breaker: a campaign failing with errors that hurt the number's quality
rating pauses before Meta lowers the rating."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_reconcile import T, body, deliver, seed, status  # noqa: E402

from campaign.breaker import FailureBreaker  # noqa: E402
from campaign.db import Database  # noqa: E402
from campaign.models import Campaign  # noqa: E402

AT = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


def outcomes(campaign_id: int, harmful: int, fine: int) -> list[tuple[int, int | None, datetime]]:
    return [(campaign_id, 131026, AT)] * harmful + [(campaign_id, None, AT)] * fine


def test_it_trips_when_harmful_failures_pass_the_threshold_in_a_full_enough_window() -> None:
    breaker = FailureBreaker(window=100, threshold=0.3, min_outcomes=50)
    assert breaker.record(outcomes(1, 20, 20)) == []  # 50% harmful, but only 40 outcomes: too few to judge
    (trip,) = breaker.record(outcomes(1, 10, 0))
    assert (trip.campaign_id, trip.harmful, trip.outcomes, trip.by_code) == (1, 30, 50, {131026: 30})
    assert "30 of the last 50 outcomes" in trip.reason(0.3) and "131026 x30" in trip.reason(0.3)
    assert breaker.record(outcomes(1, 1, 0)) == []  # it starts afresh after a trip


def test_it_stays_closed_under_the_threshold_and_judges_each_campaign_apart() -> None:
    breaker = FailureBreaker(window=100, threshold=0.3, min_outcomes=50)
    assert breaker.record(outcomes(1, 25, 75) + outcomes(2, 10, 90)) == []
    assert [t.campaign_id for t in breaker.record(outcomes(2, 40, 0))] == [2]


def test_other_failures_do_not_count_and_a_zero_threshold_turns_it_off() -> None:
    breaker = FailureBreaker(window=10, threshold=0.3, min_outcomes=10)
    assert breaker.record([(1, 132000, AT)] * 10) == []
    assert FailureBreaker(window=10, threshold=0, min_outcomes=1).record(outcomes(1, 10, 0)) == []


def test_the_reconciler_pauses_a_campaign_whose_numbers_are_mostly_unreachable(db: Database) -> None:
    ids = [seed(db, wamid=f"wamid.{i}", phone=f"+49151000{i:05d}") for i in range(12)]
    failed = [status(f"wamid.{i}", "failed", T + i, code=131026, recipient=f"49151000{i:05d}") for i in range(8)]
    fine = [status(f"wamid.{i}", "delivered", T + i, recipient=f"49151000{i:05d}") for i in range(8, 12)]
    deliver(db, body(*failed, *fine), breaker=FailureBreaker(window=20, threshold=0.3, min_outcomes=10))
    with db.read_session() as session:
        campaign = session.get_one(Campaign, 1)
    assert campaign.state == "paused" and "8 of the last 12 outcomes" in (campaign.pause_reason or "")
    assert len(ids) == 12


def test_the_reconciler_leaves_a_healthy_campaign_running(db: Database) -> None:
    for i in range(12):
        seed(db, wamid=f"wamid.{i}", phone=f"+49151000{i:05d}")
    statuses = [status(f"wamid.{i}", "failed" if i < 2 else "read", T + i, code=131026 if i < 2 else None,
                       recipient=f"49151000{i:05d}") for i in range(12)]
    deliver(db, body(*statuses), breaker=FailureBreaker(window=20, threshold=0.3, min_outcomes=10))
    with db.read_session() as session:
        assert session.get_one(Campaign, 1).state == "running"


def test_the_breaker_is_old_news_for_a_campaign_resumed_after_the_outcomes(db: Database) -> None:
    for i in range(12):
        seed(db, wamid=f"wamid.{i}", phone=f"+49151000{i:05d}")
    with db.session() as session:
        session.get_one(Campaign, 1).paused_at = datetime.fromtimestamp(T + 100, tz=timezone.utc)  # resumed later
    failed = [status(f"wamid.{i}", "failed", T + i, code=131026, recipient=f"49151000{i:05d}") for i in range(12)]
    deliver(db, body(*failed), breaker=FailureBreaker(window=20, threshold=0.3, min_outcomes=10),
            now=datetime.fromtimestamp(T + 200, tz=timezone.utc) + timedelta(seconds=1))
    with db.read_session() as session:
        assert session.get_one(Campaign, 1).state == "running"
