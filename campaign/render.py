"""The terminal rendering the CLI uses: a campaign's summary as plain text (`campaign report
--summary`, the end of a foreground `campaign launch`, `campaign demo`).

Text only, no database access: the figures come from `summary`.
"""

from __future__ import annotations

from campaign.states import MessageState
from campaign.summary import ErrorGroup, Summary, iso_utc


def format_summary(s: Summary) -> str:
    """The summary as plain text for a terminal."""
    lines = [f"Campaign {s.campaign!r} ({s.state}): {s.total:,} recipients, as of {iso_utc(s.generated_at)}"]
    lines.append("  " + ", ".join(f"{state.value} {s.counts.get(state.value, 0):,}" for state in MessageState))
    if s.first_sent_at is not None:
        lines.append(f"  sending from {iso_utc(s.first_sent_at)} to {iso_utc(s.last_sent_at)}")
    lines.append(
        f"Delivery rate {percent(s.delivery_rate)} ({s.reached:,} delivered or read of {s.handed_to_meta:,} accepted by Meta)"
    )
    lines.append(f"Read rate     {percent(s.read_rate)} ({s.counts.get('read', 0):,} read of {s.reached:,} delivered)")
    buttons = ", ".join(f"{reply} {n:,}" for reply, n in s.replies_by_button.items())
    lines.append(f"Replies       {percent(s.reply_rate)} ({s.replied:,} of {s.reached:,} reached)" + (f"; {buttons}" if buttons else ""))
    for label, d in (("Time to deliver", s.time_to_deliver), ("Time to read   ", s.time_to_read)):
        if d.count:
            lines.append(f"{label} median {_human(d.median)}, 90% within {_human(d.p90)} ({d.count:,} messages)")
        else:
            lines.append(f"{label} -")
    failed = s.counts.get("failed", 0)
    if failed:
        extra = f", {s.failed_before_meta:,} refused before Meta accepted them" if s.failed_before_meta else ""
        lines.append(f"Failures: {failed:,}{extra}")
        lines.extend(_group_lines(s.failures))
    if s.skipped:
        lines.append(f"Skipped: {s.counts.get('skipped', 0):,}")
        lines.extend(f"  {r.count:>9,}  {r.reason}" for r in s.skipped)
    waiting = []
    if s.waiting_for_status:
        waiting.append(f"{s.waiting_for_status:,} sent over {_human(s.waiting_after.total_seconds())} ago without a delivery status")
    if s.in_doubt:
        waiting.append(f"{s.in_doubt:,} in doubt: the request may have left; waiting for a webhook or the grace period")
    if s.in_flight:
        waiting.append(f"{s.in_flight:,} being sent")
    if s.retry_pending:
        waiting.append(f"{s.retry_pending:,} queued for a retry")
    if waiting:
        lines.append("Waiting:")
        lines.extend(f"  {w}" for w in waiting)
    if s.retried or s.pair_limited or s.throttled or s.retry_errors:
        lines.append(f"Retries: {s.retried:,} needed more than one attempt, {s.pair_limited:,} held back by the pair rate "
                     f"(131056), {s.throttled:,} last throttled (130429)")
        if s.retry_errors:
            lines.append("  the last error of messages that did not fail (earlier ones are not kept):")
            lines.extend(_group_lines(s.retry_errors))
    if s.billing is not None and (s.billing.reported or s.handed_to_meta):
        lines.extend(_billing_lines(s))
    return "\n".join(lines)


def _billing_lines(s: Summary) -> list[str]:
    b = s.billing
    assert b is not None
    billable = ", ".join(f"{category} {n:,}" for category, n in b.billable_by_category.items()) or "none"
    free = ", ".join(f"{kind} {n:,}" for kind, n in b.free_by_type.items())
    lines = [f"Billing (Meta's pricing in status webhooks, {b.reported:,} of {s.handed_to_meta:,} reported): "
             f"billable {billable}" + (f"; free {free}" if free else "")]
    by_category = ", ".join(f"{category} {v:,.2f}" for category, v in b.spend_by_category.items())
    lines.append(f"  spend    {b.spend:,.2f} {b.currency}" + (f" ({by_category})" if by_category else "")
                 + f", rate card {b.rates}")
    planned = ", ".join(f"{category} {v:,.2f}" for category, v in b.estimated_by_category.items())
    lines.append(f"  estimate {b.estimated:,.2f} {b.currency}" + (f" ({planned})" if planned else "")
                 + " for the same messages")
    return lines


def _group_lines(groups: list[ErrorGroup]) -> list[str]:
    lines = []
    for g in groups:
        code = str(g.code) if g.code is not None else "-"
        title = f" [{g.title}]" if g.title else ""
        lines.append(f"  {g.count:>9,}  {code:>6}  {g.meaning}{title}")
        lines.append(f"  {'':>9}  {'':>6}  -> {g.advice}")
    return lines


def percent(rate: float | None) -> str:
    """`57.1%`, or `-` for no rate (the chart's title shows rates the same way)."""
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _human(seconds: float | None) -> str:
    """`2.5 s`, `4 min 10 s`, `1 h`, `2 d 3 h`."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    for big, big_unit, small, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "min"), (60, "min", 1, "s")):
        if seconds >= big:
            whole, rest = int(seconds // big), int(seconds % big // small)
            return f"{whole} {big_unit} {rest} {small_unit}" if rest else f"{whole} {big_unit}"
    return f"{seconds:.1f} s"

