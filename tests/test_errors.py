"""The error table: each code the platform documents maps to the action the engine takes."""

from __future__ import annotations

import pytest

from campaign.errors import RULES, Action, rule_for


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
        (100, Action.FAIL), (131026, Action.FAIL), (131047, Action.FAIL), (131049, Action.FAIL), (130472, Action.FAIL),
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
