"""Status merging: monotonic, order-free, idempotent (statuses.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaign.statuses import (
    Delivery,
    StatusError,
    StatusUpdate,
    callback_data,
    merge,
    merge_all,
    parse_callback_data,
    parse_quick_reply_payload,
    quick_reply_payload,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


SENT = StatusUpdate("sent", at(0))
DELIVERED = StatusUpdate("delivered", at(5))
READ = StatusUpdate("read", at(60))
FAILED = StatusUpdate("failed", at(7), StatusError(131026, "Message undeliverable", "not on WhatsApp"))


def test_statuses_climb_sent_delivered_read() -> None:
    d = merge_all(Delivery("sending"), [SENT, DELIVERED, READ])
    assert (d.state, d.sent_at, d.delivered_at, d.read_at) == ("read", at(0), at(5), at(60))


def test_a_late_sent_does_not_undo_delivered() -> None:
    d = merge_all(Delivery("sent", sent_at=at(0)), [DELIVERED, SENT])
    assert d.state == "delivered"


def test_a_late_delivered_after_read_only_fills_its_timestamp() -> None:
    d = merge(Delivery("read", sent_at=at(0), read_at=at(60), delivered_at=at(60)), DELIVERED)
    assert d.state == "read" and d.delivered_at == at(5)


def test_read_implies_delivered_when_delivered_was_skipped() -> None:
    d = merge(Delivery("sent", sent_at=at(0)), READ)
    assert d.state == "read" and d.delivered_at == at(60) and d.sent_at == at(0)


def test_played_counts_as_read() -> None:
    d = merge(Delivery("delivered"), StatusUpdate("played", at(90)))
    assert d.state == "read" and d.read_at == at(90)


@pytest.mark.parametrize("state", ["sending", "sent", "delivered"])
def test_failed_follows_sending_sent_and_delivered(state: str) -> None:
    d = merge(Delivery(state), FAILED)
    assert d.state == "failed" and d.failed_at == at(7) and d.error == FAILED.error


def test_failed_does_not_undo_read_but_its_error_is_kept() -> None:
    d = merge(Delivery("read", read_at=at(60)), FAILED)
    assert d.state == "read" and d.failed_at == at(7) and d.error is not None


def test_sent_or_delivered_after_failed_keep_it_failed() -> None:
    d = merge_all(Delivery("sending"), [FAILED, SENT, DELIVERED])
    assert d.state == "failed"


def test_an_unknown_status_word_is_refused() -> None:
    with pytest.raises(ValueError):
        merge(Delivery("sent"), StatusUpdate("deleted", at(1)))


updates = st.lists(
    st.sampled_from([
        SENT, DELIVERED, READ, FAILED,
        StatusUpdate("played", at(61)),
        StatusUpdate("delivered", at(4)),
        StatusUpdate("failed", at(8), StatusError(131049, "limit", None)),
        StatusUpdate("failed", at(9)),
    ]),
    min_size=1,
    max_size=12,
)


@given(updates, st.randoms(use_true_random=False), st.sampled_from(["queued", "sending", "sent"]))
def test_every_order_and_duplication_of_one_messages_statuses_ends_the_same(
    statuses: list[StatusUpdate], rng, start: str  # type: ignore[no-untyped-def]
) -> None:
    initial = Delivery(start)
    expected = merge_all(initial, statuses)
    shuffled = statuses + [rng.choice(statuses) for _ in range(3)]  # duplicates, as Meta redelivers
    rng.shuffle(shuffled)
    assert merge_all(initial, shuffled) == expected
    assert merge_all(expected, statuses) == expected  # idempotent: applying again changes nothing


def test_callback_data_round_trips_and_ignores_other_apps_data() -> None:
    assert callback_data(42) == "m42"
    assert parse_callback_data(callback_data(42)) == 42
    for other in (None, "", "some data", "m", "m0", "m-1", "m042", "M42", "m42 ", "m" + "9" * 30, "x42"):
        assert parse_callback_data(other) is None


def test_quick_reply_payload_round_trips_and_ignores_other_payloads() -> None:
    assert quick_reply_payload(42, 0) == "m42.q0"
    assert parse_quick_reply_payload(quick_reply_payload(42, 0)) == (42, 0)
    assert parse_quick_reply_payload(quick_reply_payload(7, 12)) == (7, 12)
    for other in (None, "", "m42", "STOP", "m42.q", "m42.q01", "m0.q1", "m042.q1", "M42.q1", "m42.Q1",
                  "m42.q1 ", " m42.q1", "m42-q1", "m42.q-1", "m42.q1.q2", "m" + "9" * 30 + ".q1", "m42.q99999"):
        assert parse_quick_reply_payload(other) is None, other
