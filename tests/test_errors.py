"""The error table: each code the platform documents maps to the action the engine takes."""

from __future__ import annotations

import random

import pytest

from campaign.errors import RULES, Action, Consequence, Fate, Pause, Source, consequence, rule_for
from campaign.policy import MAX_PAIR_RETRIES, MAX_TRANSIENT_ATTEMPTS
from campaign.states import SuppressionScope


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (190, Action.PAUSE_ALL), (0, Action.PAUSE_ALL), (10, Action.PAUSE_ALL), (200, Action.PAUSE_ALL), (299, Action.PAUSE_ALL),
        (131005, Action.PAUSE_ALL), (368, Action.PAUSE_ALL), (131031, Action.PAUSE_ALL), (131042, Action.PAUSE_ALL),
        (133010, Action.PAUSE_ALL),
        (130429, Action.SLOW_DOWN), (131056, Action.RETRY_RECIPIENT_LATER),
        (1, Action.RETRY), (2, Action.RETRY), (131000, Action.RETRY), (131016, Action.RETRY), (133004, Action.RETRY),
        (131057, Action.RETRY), (4, Action.RETRY), (80007, Action.RETRY),
        (131048, Action.PAUSE_CAMPAIGN), (131064, Action.PAUSE_CAMPAIGN), (132000, Action.PAUSE_CAMPAIGN),
        (132001, Action.PAUSE_CAMPAIGN), (132012, Action.PAUSE_CAMPAIGN), (132015, Action.PAUSE_CAMPAIGN),
        (100, Action.FAIL), (131026, Action.FAIL), (131047, Action.FAIL), (131049, Action.WAIT), (130472, Action.FAIL),
        (131050, Action.FAIL_AND_SUPPRESS),
    ],
)
def test_codes_map_to_the_documented_action(code: int, action: Action) -> None:
    assert rule_for(code).action is action


def test_no_code_has_two_rules() -> None:
    codes = [code for rule in RULES for code in rule.codes]
    assert len(codes) == len(set(codes))


def test_side_effects_are_attached_to_their_codes() -> None:
    assert rule_for(131026).unreachable
    assert rule_for(131049).no_resend_for == 86400
    assert rule_for(131057).retry_after == 60


def test_unknown_codes_fail_unless_the_http_status_says_transient() -> None:
    assert rule_for(999999).action is Action.FAIL
    assert rule_for(None, 503).action is Action.RETRY
    assert rule_for(None, 429).action is Action.RETRY
    assert rule_for(None, 400).action is Action.FAIL


# -- what an error does: one decision for a send's answer and a failed status webhook ---------

SEND, STATUS = Source.SEND, Source.STATUS


def what(code: int | None, source: Source = SEND, *, attempts: int = 1, pair_hits: int = 0, http: int | None = None) -> Consequence:
    return consequence(rule_for(code, http), source=source, attempts=attempts, pair_hits=pair_hits,
                       rng=random.Random(1), retry_base=2.0)


def test_a_transient_send_error_is_retried_with_backoff_until_the_attempts_run_out() -> None:
    first, later = what(131000, attempts=1), what(131000, attempts=3)
    assert first.fate is Fate.RETRY and 1.0 <= first.retry_after <= 2.0
    assert later.fate is Fate.RETRY and 4.0 <= later.retry_after <= 8.0
    last = what(131000, attempts=MAX_TRANSIENT_ATTEMPTS)
    assert last.fate is Fate.FAIL and last.gave_up


def test_a_documented_wait_is_the_least_a_retry_waits() -> None:
    assert what(131057).retry_after == 60


def test_throttling_slows_the_sender_and_retries_without_counting_against_the_message() -> None:
    throttled = what(130429, attempts=MAX_TRANSIENT_ATTEMPTS + 3)
    assert throttled.fate is Fate.RETRY and throttled.slow_sender and throttled.retry_after == 1.0


def test_the_pair_rate_holds_the_recipient_longer_each_time_then_fails() -> None:
    assert [what(131056, pair_hits=n).retry_after for n in range(3)] == [1.0, 4.0, 16.0]
    assert what(131056).pair_hit
    assert what(131056, pair_hits=MAX_PAIR_RETRIES).fate is Fate.FAIL


@pytest.mark.parametrize("source", [SEND, STATUS])
def test_the_marketing_limit_is_a_wait_from_either_source_a_bounded_number_of_times(source: Source) -> None:
    waiting = consequence(rule_for(131049), source=source, attempts=1, marketing_waits=2, marketing_retries=3,
                          marketing_retry_after=600)
    assert (waiting.fate, waiting.retry_after, waiting.marketing_wait) == (Fate.RETRY, 600, True)
    spent = consequence(rule_for(131049), source=source, attempts=1, marketing_waits=3, marketing_retries=3,
                        marketing_retry_after=600)
    assert spent.fate is Fate.FAIL and spent.gave_up
    assert waiting.limit_marketing_for == spent.limit_marketing_for == 600  # the contact waits as long


@pytest.mark.parametrize("source", [SEND, STATUS])
def test_contact_effects_are_the_same_from_either_source(source: Source) -> None:
    assert what(131026, source).unreachable and what(131026, source).fate is Fate.FAIL
    assert what(131050, source).suppress is SuppressionScope.MARKETING and what(131050, source).fate is Fate.FAIL
    assert not what(100, source).unreachable and not what(100, source).suppress


def test_parameters_meta_refuses_pause_the_campaign_they_will_not_fix_themselves() -> None:
    for code in (131008, 132018):
        assert what(code).pause is Pause.CAMPAIGN


def test_a_media_failure_fails_the_message_and_may_pause_the_campaign_when_most_fail() -> None:
    assert what(131053, STATUS).fate is Fate.FAIL and rule_for(131053).pause_when_most


def test_a_doomed_campaign_or_sender_pauses_and_holds_an_unsent_message() -> None:
    assert (what(132001).fate, what(132001).pause) == (Fate.HOLD, Pause.CAMPAIGN)
    assert (what(190).fate, what(190).pause) == (Fate.HOLD, Pause.SENDER)


def test_a_failed_status_is_final_for_the_message_meta_had_accepted() -> None:
    for code in (131000, 130429, 131056, 131026):
        assert what(code, STATUS).fate is Fate.FAIL, code
    assert (what(132015, STATUS).fate, what(132015, STATUS).pause) == (Fate.FAIL, Pause.CAMPAIGN)

