"""Send lanes: the workers of one sender share its rate in the database, and together never
pass it; 130429 slows all of them down.

Each worker reserves evenly spaced send slots in its own lane, at the sender's rate divided
by the live lanes, so any number of workers together pace at the cap and none has to keep
the pace of all of them. Times are Unix seconds as floats (the clock's `time()`): slot
arithmetic stays the same on both dialects. The rows are `send_slots` (per sender: the
rate, the end of the latest slot) and `send_lanes` (per sender and worker).
"""

from __future__ import annotations

from sqlalchemy import delete, select, text, update

from campaign.db import Database
from campaign.models import SendLane, SendSlots

SLOW_FACTOR = 0.8
"""130429: the rate drops by a fifth, at most once a second..."""
RECOVER_AFTER = 2.0
RECOVER_PER_SECOND = 0.1
"""...and from this many seconds after the last drop it climbs back by a tenth of the cap a second."""
LANE_EXPIRY = 1.0
"""Seconds after its last reserved slot that a worker's lane still counts: a worker that is
briefly between claims keeps its share; one that died gives it up soon."""


class SendLanes:
    """One worker's lanes, one per sender it sends for."""

    def __init__(self, db: Database, worker_id: str) -> None:
        self.db = db
        self.worker_id = worker_id

    def reserve(self, sender: str, count: int, cap: float, now: float) -> tuple[float, float]:
        """Reserve `count` send slots in this worker's lane of `sender`: (first slot, rate).

        A worker joining starts after every slot reserved at the old shares, so the shares
        never add up to more than the rate at any moment."""
        with self.db.session() as session:
            row = session.get(SendSlots, sender, with_for_update=True)
            if row is None:
                session.execute(_SLOTS_INIT, {"sender": sender, "rate": cap})
                row = session.get(SendSlots, sender, with_for_update=True)
                assert row is not None
            rate = min(row.rate, cap)
            if rate < cap and now > row.adjusted_at:
                # No throttling for a while: climb back by a tenth of the cap per second.
                rate = min(cap, rate + cap * RECOVER_PER_SECOND * (now - row.adjusted_at))
                row.adjusted_at = now
            row.rate = rate
            session.execute(delete(SendLane).where(SendLane.sender == sender, SendLane.next_at < now - LANE_EXPIRY))
            lanes = dict(session.execute(select(SendLane.worker, SendLane.next_at).where(SendLane.sender == sender)).all())
            own = lanes.get(self.worker_id)
            start = max(now, row.next_at if own is None else own)
            lanes[self.worker_id] = start
            share = rate / len(lanes)
            end = start + count / share
            if own is None:
                session.add(SendLane(sender=sender, worker=self.worker_id, next_at=end))
            else:
                session.execute(update(SendLane).where(SendLane.sender == sender, SendLane.worker == self.worker_id)
                                .values(next_at=end))
            row.next_at = max(row.next_at, end)
            return start, share

    def release(self) -> None:
        """This worker sends no more: its share goes to the others at their next reservation."""
        with self.db.session() as session:
            session.execute(delete(SendLane).where(SendLane.worker == self.worker_id))

    def slow_down(self, sender: str, cap: float, now: float) -> float:
        """130429: the sender was throttled; every worker slows down."""
        with self.db.session() as session:
            row = session.get(SendSlots, sender, with_for_update=True)
            if row is None:
                return cap
            if now > row.adjusted_at - RECOVER_AFTER + 1.0:  # one step a second, however many 130429s
                row.rate = max(1.0, min(row.rate, cap) * SLOW_FACTOR)
                row.adjusted_at = now + RECOVER_AFTER  # no recovery before then
            return row.rate


_SLOTS_INIT = text(
    "INSERT INTO send_slots (sender, next_at, rate, adjusted_at) VALUES (:sender, 0, :rate, 0) ON CONFLICT (sender) DO NOTHING"
)
