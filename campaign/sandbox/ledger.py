"""The ledger: every ``/messages`` request the sandbox received, and figures computed from it.

Tests and benchmarks assert on what reached "Meta" (the cap held in every sliding second, no
duplicate sends, no free-form outside the window), so the ledger records arrivals as the limits
saw them: the same ``time.monotonic`` value the throughput window used. Appending is O(1);
figures are computed on demand, never on the request path.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

ACCEPTED = "accepted"
ERROR = "error"
THROTTLED_CODE = 130429
PAIR_LIMIT_CODE = 131056
TRANSIENT_CODES = (1, 2, 131000)


@dataclass(slots=True)
class LedgerEntry:
    """One ``/messages`` request: when it came, what it asked, what the sandbox answered.

    Shape (``as_dict``, and ``GET /_sandbox/ledger``'s ``entries``)::

        {"seq": 12, "monotonic": 8123.4, "wall": 1767225600.1, "phone_number_id": "1065...",
         "to": "+4915112345678", "wa_id": "4915112345678", "addressed_by": "to", "user_id": null,
         "type": "template",
         "template_name": "promo_image", "template_language": "en_US",
         "components": [{"type": "header", "parameters": [{"type": "image", "image": {"id": "..."}}]},
                        {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]},
                        {"type": "button", "sub_type": "url", "index": "0",
                         "parameters": [{"type": "text", "text": "A-1042"}]}],
         "callback_data": "outbox-7", "outcome": "accepted", "http_status": 200, "error_code": null,
         "wamid": "wamid.HBgL...", "sent_anyway": false, "window_open": null, "fate": "read",
         "failure_code": null}

    ``wa_id`` is the person whichever field named them; ``addressed_by`` says which did: ``"to"``
    (a phone number; then ``user_id`` is null) or ``"recipient"`` (a BSUID, in ``user_id``; ``to`` is
    null), so a test can count one person's messages across both identities.
    ``components`` is the template's ``components`` exactly as the request sent it (None for
    other types or when absent): the very list parsed from the body, kept by reference and never
    copied, so each recipient's values can be checked at their targets without slowing sends.
    """

    seq: int
    monotonic: float
    wall: float
    phone_number_id: str
    to: str | None = None
    wa_id: str | None = None
    addressed_by: str = "to"  # "to" or "recipient": which field of the request named the user
    user_id: str | None = None  # the BSUID given in ``recipient`` (sends addressed by BSUID only)
    type: str | None = None
    template_name: str | None = None
    template_language: str | None = None
    components: list[Any] | None = None
    callback_data: str | None = None
    outcome: str = ERROR  # "accepted" (200) or "error"
    http_status: int = 0
    error_code: int | None = None
    wamid: str | None = None
    # True when a transient error was answered although the message did leave (Meta's 5xx ambiguity).
    sent_anyway: bool = False
    window_open: bool | None = None  # for free-form sends: was the 24-hour window open
    # The last status the webhooks will report ("sent", "delivered", "read", "failed"); without a
    # webhook URL only "failed" (or None) is known.
    fate: str | None = None
    failure_code: int | None = None  # the code of a scheduled ``failed`` status
    content_key: bytes | None = field(default=None, repr=False)

    @property
    def reached_user(self) -> bool:
        """Whether the message left towards the user (accepted, or sent despite a 5xx)."""
        return self.outcome == ACCEPTED or self.sent_anyway

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (without the internal content hash)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "content_key"}
        return data


@dataclass(slots=True)
class LedgerFigures:
    """What the ledger proves about a run."""

    requests: int = 0
    accepted: int = 0
    throttled: int = 0  # 130429
    pair_limit_hits: int = 0  # 131056
    max_in_any_second: int = 0  # arrivals in any sliding one-second window
    max_accepted_in_any_second: int = 0
    window_violations: int = 0  # free-form sends that reached a user outside the 24-hour window
    duplicate_sends: int = 0  # sends that reached a user already reached by the same content or callback data
    duplicate_content: int = 0
    duplicate_callback_data: int = 0
    errors_by_code: dict[int, int] = field(default_factory=dict)
    transient_errors: int = 0
    sent_anyway: int = 0
    status_failures_by_code: dict[int, int] = field(default_factory=dict)  # scheduled ``failed`` webhooks
    media_uploads: int = 0  # files accepted by POST /{phone-number-id}/media
    min_pair_gap: float | None = None  # smallest gap between two accepted sends to one recipient
    first_arrival: float | None = None
    last_arrival: float | None = None
    accepted_per_second: float | None = None  # accepted / (last - first accepted arrival)
    accepted_each_second: list[int] = field(default_factory=list)  # per whole second from the first accepted

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form; code keys become strings."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["errors_by_code"] = {str(k): v for k, v in sorted(self.errors_by_code.items())}
        data["status_failures_by_code"] = {str(k): v for k, v in sorted(self.status_failures_by_code.items())}
        return data

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def max_in_window(times: list[float], width: float = 1.0) -> int:
    """The most ``times`` (sorted) inside any half-open window of ``width`` seconds, (t - width, t]."""
    best = 0
    start = 0
    for end, now in enumerate(times):
        horizon = now - width
        while times[start] <= horizon:
            start += 1
        best = max(best, end - start + 1)
    return best


class Ledger:
    """Append-only record of ``/messages`` requests, in arrival order."""

    def __init__(self) -> None:
        self.entries: list[LedgerEntry] = []
        self.other_requests: Counter[str] = Counter()  # contacts, templates, ... by endpoint
        self.media_uploads: Counter[str] = Counter()  # accepted uploads by phone-number id
        self._next_seq = 1
        self.accepted_count = 0

    def new_entry(self, monotonic: float, wall: float, phone_number_id: str) -> LedgerEntry:
        """Start the record of a request that just arrived (appended at once, filled in as it is decided)."""
        entry = LedgerEntry(self._next_seq, monotonic, wall, phone_number_id)
        self._next_seq += 1
        self.entries.append(entry)
        return entry

    def mark_accepted(self, entry: LedgerEntry) -> None:
        """Count an accepted send (kept incrementally so pollers need not compute figures)."""
        entry.outcome = ACCEPTED
        entry.http_status = 200
        self.accepted_count += 1

    def count_other(self, endpoint: str) -> None:
        """Count a request to an endpoint other than ``/messages``."""
        self.other_requests[endpoint] += 1

    def count_upload(self, phone_number_id: str) -> None:
        """Count a media upload the sandbox accepted."""
        self.media_uploads[phone_number_id] += 1

    def clear(self) -> None:
        """Forget everything (``POST /_sandbox/reset``); sequence numbers keep growing."""
        self.entries = []
        self.other_requests = Counter()
        self.media_uploads = Counter()
        self.accepted_count = 0

    def find(self, wamid: str) -> LedgerEntry | None:
        """The entry that produced ``wamid``."""
        for entry in reversed(self.entries):
            if entry.wamid == wamid:
                return entry
        return None

    def snapshot(self, phone_number_id: str | None = None, since_seq: int = 0) -> list[LedgerEntry]:
        """A copy of the entries (safe to iterate from another thread)."""
        entries = list(self.entries)
        return [e for e in entries
                if e.seq > since_seq and (phone_number_id is None or e.phone_number_id == phone_number_id)]

    def figures(self, phone_number_id: str | None = None) -> LedgerFigures:
        """Compute the figures over all entries, or one sender's. O(n), on demand."""
        figures = compute_figures(self.snapshot(phone_number_id))
        figures.media_uploads = (sum(self.media_uploads.values()) if phone_number_id is None
                                 else self.media_uploads[phone_number_id])
        return figures


def compute_figures(entries: Iterable[LedgerEntry]) -> LedgerFigures:
    """The ledger's figures over ``entries`` (in arrival order)."""
    figures = LedgerFigures()
    arrivals: list[float] = []
    accepted_times: list[float] = []
    errors: Counter[int] = Counter()
    failures: Counter[int] = Counter()
    seen_content: set[tuple[str | None, bytes | None]] = set()
    seen_callback: set[str] = set()
    last_to_pair: dict[tuple[str, str | None], float] = {}
    for entry in entries:
        arrivals.append(entry.monotonic)
        if entry.outcome == ACCEPTED:
            accepted_times.append(entry.monotonic)
            pair = (entry.phone_number_id, entry.wa_id)
            previous = last_to_pair.get(pair)
            if previous is not None:
                gap = entry.monotonic - previous
                if figures.min_pair_gap is None or gap < figures.min_pair_gap:
                    figures.min_pair_gap = gap
            last_to_pair[pair] = entry.monotonic
        elif entry.error_code is not None:
            errors[entry.error_code] += 1
        if entry.sent_anyway:
            figures.sent_anyway += 1
        if entry.reached_user:
            content = (entry.wa_id, entry.content_key)
            dup_content = content in seen_content
            dup_callback = entry.callback_data is not None and entry.callback_data in seen_callback
            # A send that Meta failed (131049, 131026, ...) reached nobody: sending it again is
            # no duplicate. Only what was delivered counts as had.
            if entry.failure_code is None:
                seen_content.add(content)
                if entry.callback_data is not None:
                    seen_callback.add(entry.callback_data)
            figures.duplicate_content += dup_content
            figures.duplicate_callback_data += dup_callback
            figures.duplicate_sends += dup_content or dup_callback
            if entry.window_open is False:
                figures.window_violations += 1
            if entry.failure_code is not None:
                failures[entry.failure_code] += 1
    figures.requests = len(arrivals)
    figures.accepted = len(accepted_times)
    figures.throttled = errors.get(THROTTLED_CODE, 0)
    figures.pair_limit_hits = errors.get(PAIR_LIMIT_CODE, 0)
    figures.transient_errors = sum(errors.get(code, 0) for code in TRANSIENT_CODES)
    figures.errors_by_code = dict(errors)
    figures.status_failures_by_code = dict(failures)
    arrivals.sort()  # already in order (decided at arrival, in one loop); cheap insurance
    accepted_times.sort()
    figures.max_in_any_second = max_in_window(arrivals)
    figures.max_accepted_in_any_second = max_in_window(accepted_times)
    if arrivals:
        figures.first_arrival, figures.last_arrival = arrivals[0], arrivals[-1]
    if len(accepted_times) > 1 and accepted_times[-1] > accepted_times[0]:
        figures.accepted_per_second = (len(accepted_times) - 1) / (accepted_times[-1] - accepted_times[0])
        each = [0] * (int(accepted_times[-1] - accepted_times[0]) + 1)
        for at in accepted_times:
            each[int(at - accepted_times[0])] += 1
        figures.accepted_each_second = each
    return figures
