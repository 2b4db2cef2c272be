"""The failure-rate breaker: a campaign whose recent outcomes fail too often with errors that
lower the number's quality rating is paused before Meta lowers it. Pure, no I/O.

Meta rates a sending number by how its messages are received: messages to numbers not on
WhatsApp (131026), to people it already limits (131049) or who stopped marketing
(131050), and blocks and reports (131048) all weigh against it, and a low rating cuts the
messaging limit or the number's access. A sliding window of each campaign's latest
outcomes (delivered or read: fine; failed with such an error: harmful) trips when the
harmful share passes the threshold, once the window holds enough outcomes to judge.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime

HARMFUL = frozenset({131026, 131048, 131049, 131050})
"""Failures that tell Meta the business writes to people who do not want, or cannot get,
its messages (whatsapp-cloud-api.md, error codes; Meta's quality rating guidance)."""
WINDOW = 300
THRESHOLD = 0.3
MIN_OUTCOMES = 100


@dataclass(frozen=True)
class Trip:
    campaign_id: int
    harmful: int
    outcomes: int
    by_code: dict[int, int]
    at: datetime
    """The latest outcome's time: a pause older than the user's resume is old news."""

    def reason(self, threshold: float) -> str:
        codes = ", ".join(f"{code} x{n}" for code, n in sorted(self.by_code.items()))
        return (f"failure-rate breaker: {self.harmful} of the last {self.outcomes} outcomes failed with errors that "
                f"lower the number's quality rating ({codes}), over {threshold:.0%}; check the list's consent and "
                "freshness before resuming")


@dataclass
class FailureBreaker:
    """Per campaign, its latest outcomes; `record` says which campaigns trip."""

    window: int = WINDOW
    threshold: float = THRESHOLD
    min_outcomes: int = MIN_OUTCOMES
    _outcomes: dict[int, deque[int | None]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.threshold > 0 and self.window > 0

    def record(self, outcomes: list[tuple[int, int | None, datetime]]) -> list[Trip]:
        """(campaign id, harmful error code or None for a fine outcome, time), in order; the
        campaigns whose window trips now (their window starts afresh)."""
        if not self.enabled:
            return []
        latest: dict[int, datetime] = {}
        for campaign_id, code, at in outcomes:
            window = self._outcomes.setdefault(campaign_id, deque(maxlen=self.window))
            window.append(code if code in HARMFUL else None)
            latest[campaign_id] = max(at, latest.get(campaign_id, at))
        trips = []
        for campaign_id, at in latest.items():
            window = self._outcomes[campaign_id]
            harmful = Counter(code for code in window if code is not None)
            count = sum(harmful.values())
            if len(window) >= min(self.min_outcomes, self.window) and count > self.threshold * len(window):
                trips.append(Trip(campaign_id, count, len(window), dict(harmful), at))
                window.clear()
        return trips
