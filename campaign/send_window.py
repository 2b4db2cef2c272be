"""Send windows in the recipient's local time: pure rules, no I/O.

`campaign create --send-window 09:00-20:00` sends a message only while it is between those
hours where the recipient lives. Where that is comes from the number: phonenumbers' time
zones for its prefix (an area code in North America, often the whole country elsewhere).

- A number whose prefix spans several zones (a Russian or an Australian mobile, a +1 toll
  free number) is inside the window only when it is inside in every one of them: the
  intersection of their windows, so nobody is woken up. Where that intersection is empty
  (zones further apart than the window allows, e.g. Guam and Hawaii for a 09:00-20:00 window),
  the number is treated as one of no known zone.
- A number with no known zone (and a recipient known only by a BSUID) uses the campaign's
  default zone (`--timezone`, UTC when unset).
- A window may cross midnight (`20:00-08:00`); start and end are minutes, the end excluded.
- Daylight saving time is the zone's own: zoneinfo turns each day's local opening into an
  instant; an opening in a spring-forward gap falls an hour later, as a wall clock would show.

The zones of a number are stored as a *zone set* (a few hundred distinct ones exist), so the
claim filters by a small integer and asks this module which sets are open now.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE
from phonenumbers.timezone import time_zones_for_number
from phonenumbers.tzdata import TIMEZONE_DATA

from campaign.exceptions import CampaignError

UNKNOWN = ""
"""The zone set of a number phonenumbers places nowhere (and of a BSUID-only recipient)."""
HORIZON_DAYS = 8
"""How far ahead an opening is looked for: every window opens within a day in each zone,
and a week covers a DST change or a weekly gap in an intersection."""
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class SendWindow:
    """Local hours `start` (included) to `end` (excluded); crosses midnight when end < start."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> SendWindow:
        match = _WINDOW.match(text)
        if not match:
            raise CampaignError(f"--send-window {text!r} is not HH:MM-HH:MM, e.g. 09:00-20:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h2 == 24 and m2 == 0:  # "09:00-24:00" means until midnight
            h2 = 0
        if not (h1 < 24 and h2 < 24 and m1 < 60 and m2 < 60):
            raise CampaignError(f"--send-window {text!r}: hours are 00-23 and minutes 00-59")
        if (h1, m1) == (h2, m2):
            raise CampaignError(f"--send-window {text!r} opens and closes at the same minute")
        return cls(time(h1, m1), time(h2, m2))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


def parse_timezone(name: str) -> str:
    """An IANA zone name (`--timezone`), checked."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CampaignError(f"--timezone {name!r} is not an IANA time zone such as Europe/Berlin or UTC") from None
    return name


def zone_set_of(e164: str | None) -> str:
    """The zones of a number as one string (sorted, space-separated), UNKNOWN when none.

    phonenumbers' `time_zones_for_number`: the zones of the number's area where its type is
    geographical (fixed lines, North American numbers, mobiles in Brazil or Mexico), else of
    its whole country (an Australian or a Russian mobile). The answer depends only on the
    number's first digits (the table's longest prefix in its country, and three national
    digits for the type), so it is computed once per such prefix: parsing costs 20 µs."""
    if not e164 or not e164.startswith("+"):
        return UNKNOWN
    for length in (1, 2, 3):
        if int(e164[1:1 + length] or 0) in COUNTRY_CODE_TO_REGION_CODE:
            country = TIMEZONE_DATA.get(e164[1:1 + length])
            if country is not None and len(country) == 1:
                return _known(country)  # a country with one zone needs no parsing (most of them)
            prefix = e164[1:1 + _KEY_LENGTH.get(e164[1:1 + length], 9)]
            break
    else:
        return UNKNOWN
    known = _BY_PREFIX.get(prefix)
    if known is None:
        try:
            number = phonenumbers.parse(e164)
        except phonenumbers.NumberParseException:
            return UNKNOWN
        known = _known(tuple(time_zones_for_number(number)))
        if len(_BY_PREFIX) < 500_000:
            _BY_PREFIX[prefix] = known
    return known


_BY_PREFIX: dict[str, str] = {}


def _key_lengths() -> dict[str, int]:
    """Per country code, the digits that decide a number's zones: its longest prefix in the
    zone table, and at least three national digits (which decide a number's type)."""
    lengths: dict[str, int] = {}
    for prefix in TIMEZONE_DATA:
        for length in (1, 2, 3):
            if int(prefix[:length]) in COUNTRY_CODE_TO_REGION_CODE:
                country = prefix[:length]
                lengths[country] = max(lengths.get(country, length + 3), len(prefix))
                break
    return lengths


_KEY_LENGTH = _key_lengths()


@functools.cache
def _known(zones: tuple[str, ...]) -> str:
    return " ".join(sorted(z for z in zones if _zone(z) is not None))


@functools.cache
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # Etc/Unknown, or a name this tzdata lacks
        return None


def _zones(zone_set: str, default: str) -> tuple[ZoneInfo, ...]:
    zones = tuple(z for z in (_zone(n) for n in zone_set.split()) if z is not None)
    return zones or (_zone(default) or ZoneInfo("UTC"),)


def _inside(window: SendWindow, zones: tuple[ZoneInfo, ...], at: datetime) -> bool:
    return all(window.contains(at.astimezone(z).time()) for z in zones)


def _openings(window: SendWindow, zones: tuple[ZoneInfo, ...], now: datetime) -> list[datetime]:
    """Every instant from `now` to the horizon at which some zone's window opens, and now:
    the intersection of windows can only begin at one of these."""
    found = {now}
    for zone in zones:
        today = now.astimezone(zone).date()
        for day in range(-1, HORIZON_DAYS + 1):
            local = datetime.combine(today + timedelta(days=day), window.start, tzinfo=zone)
            at = local.astimezone(timezone.utc)
            if now <= at <= now + timedelta(days=HORIZON_DAYS):
                found.add(at)
    return sorted(found)


@functools.lru_cache(maxsize=4096)
def _effective(window: SendWindow, zone_set: str, default: str, week: date) -> tuple[ZoneInfo, ...]:
    """The zones a set's window is kept in: its own, or the default's when they never all
    open together (checked over the week from `week`, so a DST change is seen)."""
    zones = _zones(zone_set, default)
    if len(zones) == 1:
        return zones
    start = datetime.combine(week, time(), tzinfo=timezone.utc)
    if any(_inside(window, zones, at) for at in _openings(window, zones, start)):
        return zones
    return _zones(UNKNOWN, default)


def zones_for(window: SendWindow, zone_set: str, default: str, now: datetime) -> tuple[ZoneInfo, ...]:
    return _effective(window, zone_set, default, now.date())


def is_open(window: SendWindow, zone_set: str, default: str, now: datetime) -> bool:
    """Whether a recipient of `zone_set` may get a message at `now`."""
    return _inside(window, zones_for(window, zone_set, default, now), now)


def next_open(window: SendWindow, zone_set: str, default: str, now: datetime) -> datetime | None:
    """When the recipient's window next opens (`now` when it is open), None past the horizon."""
    zones = zones_for(window, zone_set, default, now)
    return next((at for at in _openings(window, zones, now) if _inside(window, zones, at)), None)


def next_close(window: SendWindow, zone_set: str, default: str, now: datetime) -> datetime:
    """When an open window closes: the first zone's end after `now` (now + horizon if never)."""
    zones = zones_for(window, zone_set, default, now)
    ends = []
    for zone in zones:
        today = now.astimezone(zone).date()
        for day in range(0, 3):
            at = datetime.combine(today + timedelta(days=day), window.end, tzinfo=zone).astimezone(timezone.utc)
            if at > now:
                ends.append(at)
                break
    return min(ends, default=now + timedelta(days=HORIZON_DAYS))


@functools.lru_cache(maxsize=64)
def _open_sets(window: SendWindow, default: str, minute: datetime, zone_sets: frozenset[tuple[int, str]]) -> frozenset[int]:
    return frozenset(i for i, zones in zone_sets if is_open(window, zones, default, minute))


def open_sets(window: SendWindow, default: str, zone_sets: Mapping[int, str], now: datetime) -> frozenset[int]:
    """The ids of the zone sets whose window is open at `now`. Windows open and close on
    whole minutes in every zone, so the answer is cached per minute."""
    minute = now.replace(second=0, microsecond=0)
    return _open_sets(window, default, minute, frozenset(zone_sets.items()))


@dataclass(frozen=True)
class Waiting:
    """Queued messages outside their window now, and when the first of them may go."""

    count: int
    next_open: datetime | None


def waiting(window: SendWindow, default: str, queued: Iterable[tuple[str, int]], now: datetime) -> Waiting:
    """Of the queued messages per zone set, those waiting for their window."""
    count, first = 0, None
    for zone_set, n in queued:
        if n and not is_open(window, zone_set, default, now):
            count += n
            opens = next_open(window, zone_set, default, now)
            if opens is not None and (first is None or opens < first):
                first = opens
    return Waiting(count, first)


def finish_time(window: SendWindow, default: str, queued: Iterable[tuple[str, int]], now: datetime,
                rate: float) -> datetime | None:
    """When `queued` (messages per zone set) would all be sent at `rate` per second, each
    only while its window is open: the dispatcher fills the cap with whoever is inside, so
    the rate is shared by the open sets. Those closing first go first. None past the horizon."""
    if rate <= 0:
        return None
    left = {zone_set: n for zone_set, n in queued if n > 0}
    at, horizon = now, now + timedelta(days=HORIZON_DAYS)
    while left and at < horizon:
        open_ = {z: next_close(window, z, default, at) for z in left if is_open(window, z, default, at)}
        upcoming = [t for z in left if z not in open_ and (t := next_open(window, z, default, at)) is not None]
        if not open_:
            if not upcoming:
                return None
            at = min(upcoming)
            continue
        # Until the next change (a set opens or closes), send from the sets closing first.
        change = min([*open_.values(), *upcoming])
        budget = rate * (change - at).total_seconds()
        for zone_set in sorted(open_, key=open_.__getitem__):
            sent = min(left[zone_set], budget)
            budget -= sent
            left[zone_set] -= sent
            if left[zone_set] <= 0:
                del left[zone_set]
        if not left:
            return change - timedelta(seconds=budget / rate)
        at = change
    return None if left else at
