"""The chart: a PNG with the delivery funnel and the events over time, drawn from aggregates
only (the summary's figures and a per-bin timeline), never from rows.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Integer, cast, extract, func, or_, select

from campaign import campaigns, files, render, summary
from campaign.db import Database
from campaign.exceptions import CampaignError
from campaign.models import Message

_m = Message.__table__.c


BIN_SECONDS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_BINS = 120


def bin_width(span_seconds: float, max_bins: int = MAX_BINS) -> int:
    """The smallest round bin width (s) that covers `span_seconds` in at most `max_bins` bins."""
    for width in BIN_SECONDS:
        if span_seconds / width <= max_bins:
            return width
    return 86400 * math.ceil(span_seconds / 86400 / max_bins)


@dataclass(frozen=True)
class Timeline:
    """Counts per time bin of each event, aggregated by the database."""

    start: datetime | None
    width: int
    """Bin width in seconds."""
    bins: int
    events: dict[str, list[int]] = field(default_factory=dict)
    """`sent`, `delivered`, `read`, `failed` → count per bin."""


def timeline(db: Database, name: str) -> Timeline:
    """Sends, deliveries, reads and failures per time bin (adaptive width)."""
    with db.read_session() as session:
        campaign = campaigns.get(session, name)
        conn = session.connection()
        postgres = conn.dialect.name == "postgresql"
        mine = _m.campaign_id == campaign.id
        times = {"sent": _m.sent_at, "delivered": _m.delivered_at, "read": _m.read_at, "failed": _m.failed_at}
        bounds = conn.execute(select(func.min(_m.sent_at), *(func.max(c) for c in times.values())).where(mine)).one()
        start = bounds[0]
        ends = [t for t in bounds[1:] if t is not None]
        if start is None or not ends:
            return Timeline(None, 1, 0)
        span = max(1.0, (max(ends) - start).total_seconds())
        width = bin_width(span)
        bins = int(span // width) + 1
        origin = start.timestamp()
        buckets = []
        for event, column in times.items():
            offset = (_epoch(postgres, column) - origin) / width
            buckets.append((func.floor(offset) if postgres else cast(offset, Integer)).label(f"b_{event}"))
        # One pass: the joint histogram of the four bins (a few thousand groups: a message's
        # events fall in nearby bins), summed per event here.
        query = (select(*buckets, func.count()).where(mine, or_(*(c.is_not(None) for c in times.values())))
                 .group_by(*buckets))
        events = {event: [0] * bins for event in times}
        for *found, n in conn.execute(query):
            for event, b in zip(times, found):
                if b is not None:
                    events[event][min(max(int(b), 0), bins - 1)] += n
    return Timeline(start, width, bins, events)


def _epoch(postgres: bool, column: Any) -> ColumnElement[Any]:
    if postgres:
        return extract("epoch", column)
    return (func.julianday(column) - 2440587.5) * 86400.0


def write_chart(db: Database, name: str, path: str | os.PathLike[str], *, figures: summary.Summary | None = None) -> Path:
    """A PNG: the delivery funnel and the events over time, from aggregates only.

    `figures`: the campaign's summary when the caller has it already (it costs seconds on
    a million messages). Drawn with matplotlib's Agg canvas and no pyplot: headless, and it
    leaves the process-wide backend of a notebook or a script importing the library alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    target = Path(path)
    s = figures if figures is not None else summary.summary(db, name)
    line = timeline(db, name)
    figure = Figure(figsize=(13, 5.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, width_ratios=[1, 1.5])
    figure.suptitle(f"Campaign {name!r} ({s.state}): {s.total:,} recipients, "
                    f"delivery {render.percent(s.delivery_rate)}, read {render.percent(s.read_rate)}", fontsize=13)
    _funnel(left, s)
    _over_time(right, line)
    files.require_folder(target)
    try:
        with files.atomic_path(target) as temp:
            figure.savefig(temp, format="png")
    except OSError as exc:
        raise CampaignError(f"{target}: cannot write the chart ({exc.strerror})") from None
    return target


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _position: f"{value:,.0f}")


def _funnel(ax: Any, s: summary.Summary) -> None:
    not_sent = s.counts.get("skipped", 0) + s.counts.get("cancelled", 0)
    pending = s.counts.get("queued", 0) + s.counts.get("sending", 0)
    bars = [("recipients", s.total, "#607d8b"), ("sent to Meta", s.handed_to_meta, "#42a5f5"),
            ("delivered", s.reached, "#26a69a"), ("read", s.counts.get("read", 0), "#2e7d32"),
            ("failed", s.counts.get("failed", 0), "#e53935"), ("skipped or cancelled", not_sent, "#9e9e9e"),
            ("queued or sending", pending, "#ffb300")]
    labels = [b[0] for b in bars][::-1]
    values = [b[1] for b in bars][::-1]
    ax.barh(labels, values, color=[b[2] for b in bars][::-1])
    top = max(values) or 1
    for y, value in enumerate(values):
        share = f" ({value / s.total:.1%})" if s.total else ""
        ax.text(value + top * 0.01, y, f"{value:,}{share}", va="center", fontsize=9)
    ax.set_xlim(0, top * 1.35)
    ax.set_title("Delivery funnel")
    ax.set_xlabel("messages")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    ax.xaxis.set_major_formatter(_thousands())
    ax.grid(axis="x", alpha=0.3)


def _over_time(ax: Any, line: Timeline) -> None:
    ax.set_title("Over time (cumulative)")
    if line.start is None:
        ax.text(0.5, 0.5, "nothing sent yet", ha="center", va="center", transform=ax.transAxes, fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    # Each bin's cumulative count at its end, from 0 at the first send: a ramp within a bin.
    edges = [line.start + timedelta(seconds=line.width * i) for i in range(line.bins + 1)]
    colours = {"sent": "#42a5f5", "delivered": "#26a69a", "read": "#2e7d32", "failed": "#e53935"}
    for event, counts in line.events.items():
        if sum(counts):
            ax.plot(edges, [0, *np.cumsum(counts).tolist()], label=event, color=colours[event], linewidth=2)
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.yaxis.set_major_formatter(_thousands())
    ax.set_xlabel(f"time (UTC), in bins of {_width_label(line.width)}")
    ax.set_ylabel("messages")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)


def _width_label(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
