"""Send lanes: the workers of one sender share its rate, and together never pass it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaign.db import Database
from campaign.lanes import LANE_EXPIRY, SendLanes

RATE = 100.0
_senders = itertools.count()


def workers(db: Database, n: int) -> list[SendLanes]:
    return [SendLanes(db, f"worker-{i}") for i in range(n)]


def test_a_worker_alone_sends_at_the_full_rate(db: Database) -> None:
    (a,) = workers(db, 1)
    start, rate = a.reserve("S", 20, RATE, 1000.0)
    assert (start, rate) == (1000.0, RATE)
    assert a.reserve("S", 20, RATE, 1000.05) == (1000.2, RATE)  # the next block joins the first


def test_a_second_worker_starts_after_the_first_ones_slots_and_both_get_half(db: Database) -> None:
    a, b = workers(db, 2)
    a.reserve("S", 20, RATE, 1000.0)  # 1000.0 .. 1000.2 at the full rate
    start, rate = b.reserve("S", 10, RATE, 1000.05)
    assert start == pytest.approx(1000.2) and rate == RATE / 2
    assert a.reserve("S", 10, RATE, 1000.1) == (pytest.approx(1000.2), RATE / 2)


def test_a_stopped_worker_gives_its_share_back_at_once(db: Database) -> None:
    a, b = workers(db, 2)
    a.reserve("S", 10, RATE, 1000.0)
    b.reserve("S", 10, RATE, 1000.0)
    b.release()
    assert a.reserve("S", 10, RATE, 1000.3)[1] == RATE


def test_a_dead_workers_share_comes_back_when_its_lane_expires(db: Database) -> None:
    a, b = workers(db, 2)
    a.reserve("S", 10, RATE, 1000.0)
    _, rate = b.reserve("S", 10, RATE, 1000.0)  # b's slots end by 1000.3; then b dies
    assert a.reserve("S", 10, RATE, 1000.3 + LANE_EXPIRY / 2)[1] == RATE / 2  # b might still be alive
    assert a.reserve("S", 10, RATE, 1000.3 + LANE_EXPIRY + 0.1)[1] == RATE


def test_senders_have_separate_lanes(db: Database) -> None:
    a, b = workers(db, 2)
    a.reserve("S1", 10, RATE, 1000.0)
    assert b.reserve("S2", 10, RATE, 1000.0) == (1000.0, RATE)


@dataclass(frozen=True)
class Step:
    worker: int
    count: int
    wait: float
    stop: bool


steps = st.lists(
    st.builds(Step, st.integers(0, 2), st.integers(1, 120), st.floats(0, 1.6), st.sampled_from([False] * 5 + [True])),
    min_size=1, max_size=30,
)


@pytest.fixture(scope="module")
def lanes_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    db = Database.open(f"sqlite:///{tmp_path_factory.mktemp('lanes') / 'lanes.db'}")
    yield db
    db.close()


@settings(max_examples=60, deadline=None)
@given(steps)
def test_whatever_the_workers_do_their_slots_never_pass_the_rate_in_any_second(lanes_db: Database, plan: list[Step]) -> None:
    sender = f"S{next(_senders)}"  # a fresh sender per example: no state carried over
    lanes = workers(lanes_db, 3)
    now, slots = 1000.0, []
    for step in plan:
        now += step.wait
        if step.stop:
            lanes[step.worker].release()  # it sends nothing after this
            slots = [(at, w) for at, w in slots if w != step.worker or at < now]
            continue
        start, rate = lanes[step.worker].reserve(sender, step.count, RATE, now)
        assert start >= now
        slots += [(start + i / rate, step.worker) for i in range(step.count)]
    times = sorted(at for at, _ in slots)
    # Within one second, each of the three lanes may round up by one slot.
    assert max_in_any_second(times) <= RATE + 3


def max_in_any_second(times: list[float]) -> int:
    best, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - 1.0 + 1e-9:
            first += 1
        best = max(best, last - first + 1)
    return best
