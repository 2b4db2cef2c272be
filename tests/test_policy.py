"""The send policy: Meta's rules, as pure functions of the recipient and the time."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from campaign import policy
from campaign.policy import Choice, Recipient, budget_left, choose_message, pair_backoff, pair_due, transient_backoff, window_open

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def recipient(**kwargs: object) -> Recipient:
    return Recipient(**{"suppressed": False, "last_inbound_at": None, **kwargs})  # type: ignore[arg-type]


def test_the_window_is_24_hours_from_the_users_last_message() -> None:
    assert window_open(NOW - 23 * HOUR, NOW)
    assert not window_open(NOW - 24 * HOUR, NOW)
    assert not window_open(None, NOW)


def test_free_form_only_inside_an_open_window() -> None:
    open_ = recipient(last_inbound_at=NOW - HOUR)
    closed = recipient(last_inbound_at=NOW - 25 * HOUR)
    assert choose_message(open_, has_template=True, has_text=True, marketing=False, now=NOW).choice is Choice.TEXT
    decision = choose_message(closed, has_template=True, has_text=True, marketing=False, now=NOW)
    assert decision.choice is Choice.TEMPLATE and decision.business_initiated


def test_someone_who_wrote_first_gets_the_free_form_text_and_the_business_writing_first_a_template() -> None:
    wrote_first = recipient(last_inbound_at=NOW - HOUR)  # never messaged by the business
    assert choose_message(wrote_first, has_template=True, has_text=True, marketing=False, now=NOW).choice is Choice.TEXT
    never_wrote = choose_message(recipient(), has_template=True, has_text=True, marketing=False, now=NOW)
    assert never_wrote.choice is Choice.TEMPLATE and never_wrote.business_initiated


def test_marketing_never_goes_to_united_states_numbers_but_utility_does() -> None:
    us = recipient(in_united_states=True)
    decision = choose_message(us, has_template=True, has_text=False, marketing=True, now=NOW)
    assert decision.choice is Choice.SKIP and "United States" in decision.reason
    assert choose_message(us, has_template=True, has_text=False, marketing=False, now=NOW).choice is Choice.TEMPLATE


def test_a_known_unreachable_number_is_skipped_until_the_memory_expires() -> None:
    failed = recipient(unreachable_at=NOW - 29 * 24 * HOUR)
    decision = choose_message(failed, has_template=True, has_text=False, marketing=False, now=NOW)
    assert decision.choice is Choice.SKIP and "131026" in decision.reason
    later = choose_message(failed, has_template=True, has_text=False, marketing=False, now=NOW + 2 * 24 * HOUR)
    assert later.choice is Choice.TEMPLATE


def test_no_template_and_a_closed_window_is_skipped() -> None:
    decision = choose_message(recipient(), has_template=False, has_text=True, marketing=False, now=NOW)
    assert decision.choice is Choice.SKIP and "window" in decision.reason


def test_suppressed_is_skipped_whatever_the_window() -> None:
    decision = choose_message(recipient(suppressed=True, last_inbound_at=NOW), has_template=True, has_text=True, marketing=False, now=NOW)
    assert decision.choice is Choice.SKIP and "suppression" in decision.reason


def test_the_marketing_limit_holds_marketing_until_it_lifts_but_not_utility() -> None:
    limited = recipient(marketing_limited_until=NOW + HOUR)
    waiting = choose_message(limited, has_template=True, has_text=False, marketing=True, now=NOW)
    assert (waiting.choice, waiting.until) == (Choice.WAIT, NOW + HOUR)
    assert choose_message(limited, has_template=True, has_text=False, marketing=False, now=NOW).choice is Choice.TEMPLATE


def test_pair_interval_and_backoffs() -> None:
    assert pair_due(NOW - timedelta(seconds=2), 6, NOW) == NOW + timedelta(seconds=4)
    assert pair_due(None, 6, NOW) == NOW
    assert [pair_backoff(n) for n in (1, 2, 3, 4)] == [1, 4, 16, 64]
    rng = random.Random(1)
    delays = [transient_backoff(n, rng, base=2) for n in (1, 2, 3, 4)]
    assert all(2 ** n / 2 <= d <= 2 ** n for n, d in zip((1, 2, 3, 4), delays))
    assert transient_backoff(30, rng, cap=300) <= 300


def test_the_messaging_limit_budget() -> None:
    assert budget_left(None, 10_000) is None
    assert budget_left(250, 200) == 50
    assert budget_left(250, 300) == 0


@pytest.mark.parametrize(("scope", "category", "applies"), [
    (None, "marketing", False),
    ("all", "utility", True), ("all", "marketing", True), ("all", None, True),
    ("marketing", "marketing", True), ("marketing", None, True),  # unknown: an opt-out is never risked
    ("marketing", "utility", False), ("marketing", "authentication", False),
])
def test_a_marketing_opt_out_stops_marketing_and_templates_of_unknown_category_only(
        scope: str | None, category: str | None, applies: bool) -> None:
    assert policy.suppression_applies(scope, category) is applies
