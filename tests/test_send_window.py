"""Send windows in the recipient's local time: the rules on exact instants across zones and
DST changes, the claim on a fake clock (both databases), and a worker against the sandbox."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).parent))

from dispatch_helpers import seed  # noqa: E402
from meta_helpers import Meta, meta, settled, states, work_until  # noqa: E402,F401

from campaign import campaigns  # noqa: E402
from campaign.clock import FakeClock  # noqa: E402
from campaign.db import Database  # noqa: E402
from campaign.exceptions import CampaignError  # noqa: E402
from campaign.models import Contact, Message  # noqa: E402
from campaign.outbox import Outbox  # noqa: E402
from campaign.send_window import SendWindow, finish_time, is_open, next_open, waiting, zone_set_of  # noqa: E402

NINE_TO_EIGHT = SendWindow.parse("09:00-20:00")
BERLIN = [f"+49151230{i:05d}" for i in range(6)]
TOKYO = [f"+8190123{i:05d}" for i in range(6)]
NEW_YORK = "+12125550123"
RUSSIA = "+79161234567"  # a mobile: Meta's table places it anywhere from UTC+2 to UTC+12
TOLL_FREE = "+18005550100"  # Guam to Pago Pago and St. John's: no hour is inside 09:00-12:00 everywhere


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# -- the rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["9-20", "09:00", "25:00-20:00", "09:60-20:00", "09:00-09:00", "nine to five"])
def test_a_malformed_window_is_refused_naming_the_option(text: str) -> None:
    with pytest.raises(CampaignError, match="--send-window"):
        SendWindow.parse(text)


def test_a_window_across_midnight_holds_the_late_evening_and_the_small_hours() -> None:
    night = SendWindow.parse("20:00-08:00")
    at = datetime(2026, 1, 5, tzinfo=ZoneInfo("Europe/Berlin"))
    assert [night.contains((at + timedelta(hours=h)).time()) for h in (19, 20, 23, 24 + 7, 24 + 8)] == [
        False, True, True, True, False]
    assert str(night) == "20:00-08:00"


def test_the_zone_comes_from_the_number() -> None:
    assert zone_set_of(BERLIN[0]) == "Europe/Berlin"
    assert zone_set_of(TOKYO[0]) == "Asia/Tokyo"
    assert zone_set_of(NEW_YORK) == "America/New_York"
    assert {"Europe/Moscow", "Asia/Kamchatka"} <= set(zone_set_of(RUSSIA).split())
    assert zone_set_of(None) == zone_set_of("+999123") == ""


def test_new_york_opens_at_nine_its_own_time_in_winter_and_in_summer() -> None:
    # 09:00 is 14:00 UTC in January (EST) and 13:00 UTC in June (EDT).
    ny = zone_set_of(NEW_YORK)
    assert not is_open(NINE_TO_EIGHT, ny, "UTC", utc(2026, 1, 15, 13, 59))
    assert is_open(NINE_TO_EIGHT, ny, "UTC", utc(2026, 1, 15, 14, 0))
    assert is_open(NINE_TO_EIGHT, ny, "UTC", utc(2026, 6, 15, 13, 0))
    assert not is_open(NINE_TO_EIGHT, ny, "UTC", utc(2026, 6, 16, 0, 0))  # 20:00 EDT: closed (end excluded)


def test_the_next_opening_across_the_spring_forward_night() -> None:
    # New York moves from EST to EDT at 02:00 on 8 March 2026: the evening before, the
    # window closed at 20:00 EST (01:00 UTC); it opens at 09:00 EDT, 13:00 UTC, not 14:00.
    ny = zone_set_of(NEW_YORK)
    assert next_open(NINE_TO_EIGHT, ny, "UTC", utc(2026, 3, 8, 1, 0)) == utc(2026, 3, 8, 13, 0)
    # Berlin falls back on 25 October 2026: 09:00 CEST is 07:00 UTC the day before, 09:00 CET 08:00 UTC.
    berlin = zone_set_of(BERLIN[0])
    assert next_open(NINE_TO_EIGHT, berlin, "UTC", utc(2026, 10, 24, 19, 0)) == utc(2026, 10, 25, 8, 0)
    assert next_open(NINE_TO_EIGHT, berlin, "UTC", utc(2026, 10, 23, 19, 0)) == utc(2026, 10, 24, 7, 0)


def test_an_opening_inside_the_skipped_hour_comes_when_the_clock_shows_it() -> None:
    # 02:30 does not exist in New York on 8 March 2026; 03:30 EDT (07:30 UTC) is inside.
    early = SendWindow.parse("02:30-04:00")
    at = next_open(early, zone_set_of(NEW_YORK), "UTC", utc(2026, 3, 8, 5, 0))
    assert at == utc(2026, 3, 8, 7, 30)
    assert early.contains(at.astimezone(ZoneInfo("America/New_York")).time())


def test_a_number_spanning_many_zones_gets_only_the_hours_inside_the_window_everywhere() -> None:
    # In January Bucharest-time (UTC+2) says 09:00 at 07:00 UTC, and Kamchatka (UTC+12) 20:00 at 08:00 UTC.
    russia = zone_set_of(RUSSIA)
    assert [is_open(NINE_TO_EIGHT, russia, "UTC", utc(2026, 1, 15, h, m)) for h, m in ((6, 59), (7, 0), (7, 59), (8, 0))] == [
        False, True, True, False]


def test_zones_that_never_share_an_hour_fall_back_to_the_campaign_default() -> None:
    morning, toll_free = SendWindow.parse("09:00-12:00"), zone_set_of(TOLL_FREE)
    berlin_morning = utc(2026, 1, 15, 9, 0)  # 10:00 in Berlin
    assert is_open(morning, toll_free, "Europe/Berlin", berlin_morning)
    assert not is_open(morning, toll_free, "America/New_York", berlin_morning)  # 04:00 there
    # With a wider window the zones share half an hour (23:00-23:30 UTC): that is kept.
    assert is_open(NINE_TO_EIGHT, toll_free, "Europe/Berlin", utc(2026, 1, 15, 23, 15))
    assert not is_open(NINE_TO_EIGHT, toll_free, "Europe/Berlin", berlin_morning)
    assert is_open(NINE_TO_EIGHT, "", "Asia/Tokyo", utc(2026, 1, 15, 1, 0))  # unknown: the default, 10:00 in Tokyo


def test_waiting_counts_the_closed_and_names_the_first_opening() -> None:
    now = utc(2026, 1, 15, 12, 0)  # Berlin 13:00 (open), Tokyo 21:00 and New York 07:00 (closed)
    queued = [(zone_set_of(BERLIN[0]), 5), (zone_set_of(TOKYO[0]), 3), (zone_set_of(NEW_YORK), 2)]
    result = waiting(NINE_TO_EIGHT, "UTC", queued, now)
    assert result.count == 5
    assert result.next_open == utc(2026, 1, 15, 14, 0)  # New York's 09:00 before Tokyo's (00:00 UTC)


def test_the_finish_time_waits_for_each_window() -> None:
    now = utc(2026, 1, 15, 12, 0)
    queued = [(zone_set_of(BERLIN[0]), 100), (zone_set_of(NEW_YORK), 100)]
    # Berlin's hundred go in 10 s; New York's wait for 14:00 UTC and take 10 s more.
    assert finish_time(NINE_TO_EIGHT, "UTC", queued, now, 10.0) == utc(2026, 1, 15, 14, 0, 10)
    # Too many for Berlin's afternoon (7 h at 1/s): the rest go the next morning, 08:00 UTC.
    late = finish_time(NINE_TO_EIGHT, "UTC", [(zone_set_of(BERLIN[0]), 7 * 3600 + 60)], now, 1.0)
    assert late == utc(2026, 1, 16, 8, 1)


# -- the claim -----------------------------------------------------------------------------------


def _claim(db: Database, clock: FakeClock) -> list[str]:
    with db.session() as session:
        running = campaigns.running(session, None, clock.now())
    claimed = Outbox(db, "w").claim(running, 100, clock.now(), pair_interval=0.0)
    return sorted(c.phone or "" for c in claimed)


def test_a_worker_claims_only_recipients_inside_their_window(db: Database) -> None:
    clock = FakeClock(utc(2026, 1, 15, 12, 0))  # Berlin 13:00, Tokyo 21:00
    seed(db, "evening", BERLIN[:3] + TOKYO[:3], send_window="09:00-20:00")
    assert _claim(db, clock) == sorted(BERLIN[:3])
    with db.read_session() as session:  # the others are not leased: they wait queued
        waiting_states = session.scalars(select(Message.state).join(Contact).where(Contact.phone.in_(TOKYO))).all()
    assert waiting_states == ["queued"] * 3
    clock.advance(timedelta(hours=12))  # 00:00 UTC: 09:00 in Tokyo, 01:00 in Berlin
    assert _claim(db, clock) == sorted(TOKYO[:3])


def test_a_campaign_without_a_window_is_not_held_back_by_one_with(db: Database) -> None:
    clock = FakeClock(utc(2026, 1, 15, 12, 0))
    seed(db, "windowed", TOKYO[:2], send_window="09:00-20:00")
    seed(db, "anytime", TOKYO[2:4])
    assert _claim(db, clock) == sorted(TOKYO[2:4])


def test_recipients_of_no_known_zone_follow_the_campaigns_timezone(db: Database) -> None:
    clock = FakeClock(utc(2026, 1, 15, 12, 0))
    with db.session() as session:  # a BSUID-only recipient: no number, no zone
        created = campaigns.create(session, campaigns.CampaignSpec(
            "tokyo-default", "order_update", "en_US", ["name", "order"], send_window="09:00-20:00", timezone="Asia/Tokyo"))
        contact = Contact(user_id="US.13491208655302741918")
        session.add(contact)
        session.flush()
        session.add(Message(campaign_id=created.id, contact_id=contact.id, params={"name": "x", "order": "y"}, state="queued"))
        session.flush()
        campaigns.launch(session, created)
    assert _claim(db, clock) == []  # 21:00 in Tokyo
    clock.advance(timedelta(hours=12))
    assert _claim(db, clock) == [""]


# -- end to end ---------------------------------------------------------------------------------


def test_no_send_outside_a_recipients_window_against_the_sandbox(meta: Meta) -> None:  # noqa: F811
    """A worker on a fake clock: Berlin's recipients go at once, Tokyo's not until their
    morning; every send is inside the recipient's own window."""
    clock = FakeClock(utc(2026, 1, 15, 12, 0))
    cid = seed(meta.db, "two-zones", BERLIN + TOKYO, send_window="09:00-20:00")

    def tokyo_waits() -> bool:
        now = states(meta.db, cid)
        return now.get("queued") == len(TOKYO) and "sending" not in now and sum(now.values()) == len(BERLIN + TOKYO)

    work_until(meta, tokyo_waits, clock=clock, timeout=30)
    assert sorted(meta.accepted_to()) == sorted(BERLIN)
    clock.advance(timedelta(hours=12))  # 09:00 in Tokyo
    work_until(meta, settled(meta.db, cid), clock=clock, timeout=30)
    assert sorted(meta.accepted_to()) == sorted(BERLIN + TOKYO)
    with meta.db.read_session() as session:
        sends = session.execute(select(Contact.phone, Message.sending_at).join(Contact)).all()
    for number, at in sends:
        zone = ZoneInfo(zone_set_of(number))
        assert NINE_TO_EIGHT.contains(at.astimezone(zone).time()), (number, at)


def test_status_shows_who_waits_for_their_window_and_when_it_opens(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # The window is open in Berlin now and closed in Tokyo (8 or 7 hours ahead).
    now = datetime.now(timezone.utc)
    berlin_hour = now.astimezone(ZoneInfo("Europe/Berlin")).hour
    window = f"{(berlin_hour - 1) % 24:02d}:00-{(berlin_hour + 2) % 24:02d}:00"
    recipients = tmp_path / "people.csv"
    recipients.write_text("phone,name\n" + "".join(f"{p},N\n" for p in BERLIN[:2] + TOKYO[:3]), encoding="utf-8")
    assert cli("create", "w", "--template", "hello_world", "--language", "en_US", "--send-window", window,
               "--category", "utility").exit_code == 0
    assert cli("import", "w", str(recipients)).exit_code == 0
    assert cli("launch", "w", "--detach").exit_code == 0
    result = cli("status", "w", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    tokyo_opens = next_open(SendWindow.parse(window), "Asia/Tokyo", "UTC", now)
    assert report["send_window"]["window"] == window
    assert report["send_window"]["waiting"] == 3
    assert abs(datetime.fromisoformat(report["send_window"]["next_open"]) - tokyo_opens) < timedelta(minutes=1)
    text = cli("status", "w").output
    assert "3 wait for their send window" in text


def test_create_refuses_a_bad_timezone_and_a_timezone_without_a_window(cli) -> None:  # type: ignore[no-untyped-def]
    bad = cli("create", "z", "--template", "hello_world", "--language", "en_US", "--send-window", "09:00-20:00",
              "--timezone", "Mars/Olympus")
    assert bad.exit_code == 1 and "--timezone 'Mars/Olympus'" in bad.output
    alone = cli("create", "z", "--template", "hello_world", "--language", "en_US", "--timezone", "UTC")
    assert alone.exit_code == 1 and "--send-window" in alone.output
    assert cli("status", "z").exit_code == 1  # nothing was created
