"""What a campaign will cost before launch (`campaign estimate`), and the price of what Meta
reported billable after (the summary's spend).

Meta prices per delivered template message (per-message pricing, "PMP", since July 2025) by
the template's category and the recipient's market (a country, or one of Meta's region
groups); free-form service messages inside the 24-hour window are free, and so is a utility
template sent inside it; marketing and authentication templates are charged in or out of it
(whatsapp-cloud-api.md, "The 24-hour window").

The rates come from a dated rate card (`rates/meta-2026.json`, or `--rates FILE` in the same
format) that names its source and effective date.

`estimate` is the pure part: recipients' facts (grouped, with a count) and a card in, the
figures out; no I/O. `read_groups` is the database read: one grouped query over the queued
messages, set-based, no ORM object per row.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import phonenumbers
from phonenumbers import NumberParseException

from campaign.exceptions import CampaignError
from campaign.policy import WINDOW, MarketingFrequency, suppression_applies

CATEGORIES = ("marketing", "utility", "authentication")
SERVICE = "service"
"""A free-form message sent inside the window: free."""
OTHER = "other"
"""The card's fallback market."""
UNKNOWN_COUNTRY = "unknown"
DEFAULT_CARD = Path(__file__).parent / "rates" / "meta-2026.json"
"""Next to this module, so it loads from the source tree and, once packaged as data, installed."""

SKIP_REASONS = {
    "suppressed": "on the suppression list for this category",
    "unreachable": "a message to the number failed with 131026 recently (CAMPAIGN_UNREACHABLE_DAYS)",
    "us_marketing": "marketing template to a United States number (Meta does not deliver them)",
    "authentication_bsuid": "authentication template to a user known only by a BSUID (131062)",
    "frequency_cap": "marketing template past the frequency cap if sent now (CAMPAIGN_MARKETING_FREQUENCY)",
}
_PREFIX = 7
"""Numbers are grouped by their first characters (`+` and 6 digits): enough to tell the countries
that share a calling code apart (+1 area codes, +44 1481 Guernsey, +7 7 Kazakhstan)."""


# -- the rate card -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RateCard:
    name: str
    currency: str
    effective_date: str
    source: str
    markets: dict[str, dict[str, Decimal]]
    """Market key (an ISO country, a region group, `other`) -> category -> price per message."""
    market_names: dict[str, str]
    groups: dict[str, str]
    """Country -> its region group, for countries without a market of their own."""
    note: str = ""
    path: str = ""

    def market_of(self, country: str | None) -> str:
        if country and country in self.markets:
            return country
        if country and country in self.groups:
            return self.groups[country]
        return OTHER

    def rate(self, market: str, category: str) -> Decimal:
        return self.markets.get(market, self.markets[OTHER]).get(category, Decimal(0))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "effective_date": self.effective_date, "currency": self.currency,
                "source": self.source, "file": self.path, **({"note": self.note} if self.note else {})}


def load_card(path: str | Path | None = None) -> RateCard:
    """The rate card at `path` (default: the one the project ships); CampaignError names what is wrong."""
    where = Path(path) if path is not None else DEFAULT_CARD
    try:
        doc = json.loads(where.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CampaignError(f"rate card {where}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CampaignError(f"rate card {where}: not JSON ({exc})") from None
    return parse_card(doc, str(where))


def parse_card(doc: Any, origin: str = "") -> RateCard:
    def bad(what: str) -> CampaignError:
        return CampaignError(f"rate card {origin or '(given)'}: {what}")

    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    for key in ("name", "currency", "effective_date", "source"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            raise bad(f"{key!r} is missing (a text)")
    raw_markets = doc.get("markets")
    if not isinstance(raw_markets, dict) or OTHER not in raw_markets:
        raise bad(f"'markets' must be an object with an {OTHER!r} market")
    markets: dict[str, dict[str, Decimal]] = {}
    names: dict[str, str] = {}
    for key, entry in raw_markets.items():
        if not isinstance(entry, dict):
            raise bad(f"market {key!r} is not an object")
        prices: dict[str, Decimal] = {}
        for category in CATEGORIES:
            value = entry.get(category)
            if type(value) not in (int, float) or value < 0:
                raise bad(f"market {key!r}: {category!r} must be a price per message (a number >= 0)")
            prices[category] = Decimal(str(value))
        markets[key] = prices
        names[key] = str(entry.get("name") or key)
    groups: dict[str, str] = {}
    raw_groups = doc.get("groups", {})
    if not isinstance(raw_groups, dict):
        raise bad("'groups' must map a market to its countries")
    for market, countries in raw_groups.items():
        if market not in markets or not isinstance(countries, list):
            raise bad(f"group {market!r} must be a market of the card with a list of countries")
        for country in countries:
            groups[str(country).upper()] = market
    return RateCard(name=doc["name"], currency=doc["currency"], effective_date=doc["effective_date"],
                    source=doc["source"], markets=markets, market_names=names, groups=groups,
                    note=str(doc.get("note") or ""), path=origin)


# -- countries ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _country_of_prefix(prefix: str, example: str) -> str | None:
    try:
        parsed = phonenumbers.parse(example)
    except NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(parsed)
    if region is None or region == "001":
        region = phonenumbers.region_code_for_country_code(parsed.country_code)
    return None if region in (None, "ZZ", "001") else region


def country_of(phone: str | None, user_id: str | None = None) -> str | None:
    """The ISO country of a recipient: the number's region (phonenumbers), else the BSUID's first
    two letters (identity.user_id_country). Numbers sharing their first characters are looked
    up once."""
    if phone:
        return _country_of_prefix(phone[:_PREFIX], phone)
    if user_id and len(user_id) >= 2 and user_id[:2].isalpha():
        return user_id[:2].upper()
    return None


# -- the estimate (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """`count` queued messages whose recipients share these facts."""

    country: str | None
    count: int
    in_window: bool = False
    """The recipient wrote within 24 hours (contacts.last_inbound_at)."""
    suppression_scopes: tuple[str, ...] = ()
    """The scopes of the suppressions of the recipient's number and BSUID (`all`, `marketing`)."""
    unreachable: bool = False
    """A message to them failed with 131026 within CAMPAIGN_UNREACHABLE_DAYS."""
    phone_less: bool = False
    frequency_capped: bool = False
    """They got CAMPAIGN_MARKETING_FREQUENCY's count of marketing templates in its period
    before now: one more marketing template would be skipped (read only for a marketing campaign)."""


@dataclass
class Line:
    """Messages to one country in one category."""

    country: str
    market: str
    category: str
    messages: int = 0
    in_window: int = 0
    free: int = 0
    billable: int = 0
    rate: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)


@dataclass
class Estimate:
    campaign: str
    category: str | None
    """The campaign's template category as known (None: unknown)."""
    priced_as: str
    """The category the templates are priced as: `marketing` when unknown (the safe side)."""
    has_text: bool
    card: RateCard
    total: int = 0
    """Queued messages."""
    to_send: int = 0
    in_window: int = 0
    """Of the messages to send, those whose recipient's window is open now."""
    free: int = 0
    billable: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    lines: list[Line] = field(default_factory=list)
    messages_by_country: dict[str, int] = field(default_factory=dict)
    """Every queued message by country, skipped ones included."""
    skipped_by_country: dict[str, int] = field(default_factory=dict)
    cost: Decimal = Decimal(0)
    marketing_frequency: str | None = None
    """CAMPAIGN_MARKETING_FREQUENCY as applied (`2/7d`), None when unset."""

    def by_country(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for country in sorted(self.messages_by_country):
            mine = [line for line in self.lines if line.country == country]
            out[country] = {
                "market": self.card.market_of(None if country == UNKNOWN_COUNTRY else country),
                "messages": self.messages_by_country[country],
                "skipped": self.skipped_by_country.get(country, 0),
                "in_window": sum(line.in_window for line in mine),
                "free": sum(line.free for line in mine),
                "billable": sum(line.billable for line in mine),
                "cost": _money(sum((line.cost for line in mine), Decimal(0))),
            }
        return out

    def by_category(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for category in sorted({line.category for line in self.lines}):
            mine = [line for line in self.lines if line.category == category]
            out[category] = {"messages": sum(line.messages for line in mine),
                             "in_window": sum(line.in_window for line in mine),
                             "free": sum(line.free for line in mine),
                             "billable": sum(line.billable for line in mine),
                             "cost": _money(sum((line.cost for line in mine), Decimal(0)))}
        return out

    def as_dict(self) -> dict[str, Any]:
        by_country, by_category = self.by_country(), self.by_category()
        return {
            "campaign": self.campaign,
            "category": self.category,
            "category_known": self.category is not None,
            "priced_as": self.priced_as,
            "total": self.total,
            "to_send": self.to_send,
            "in_window": self.in_window,
            "free": self.free,
            "billable": self.billable,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_total": sum(self.skipped.values()),
            "marketing_frequency": self.marketing_frequency,
            "by_country": by_country,
            "by_category": by_category,
            "lines": [{"country": line.country, "market": line.market, "category": line.category,
                       "messages": line.messages, "in_window": line.in_window, "free": line.free,
                       "billable": line.billable, "rate": float(line.rate), "cost": _money(line.cost)}
                      for line in self.lines],
            "cost": {"total": _money(self.cost), "currency": self.card.currency,
                     "by_country": {c: v["cost"] for c, v in by_country.items()},
                     "by_category": {c: v["cost"] for c, v in by_category.items()}},
            "rates": self.card.describe(),
        }


def _money(value: Decimal) -> float:
    return float(round(value, 6))


def priced_category(category: str | None) -> str:
    """A template's category for pricing: unknown is priced as marketing (the dearest, the safe side)."""
    return category if category in CATEGORIES else "marketing"


def skip_reason(group: Group, category: str | None) -> str | None:
    """The rule that stops the message (policy.choose_message's order), or None."""
    if any(suppression_applies(scope, category) for scope in group.suppression_scopes):
        return "suppressed"
    if group.unreachable:
        return "unreachable"
    return None


def estimate(groups: Iterable[Group], card: RateCard, *, category: str | None, has_text: bool = False,
             campaign: str = "", marketing_frequency: MarketingFrequency | None = None) -> Estimate:
    """The figures of sending the queued messages in `groups` now, priced from `card`. Pure.
    `marketing_frequency` is only named in the figures: the groups say who is past it."""
    category = category if category in CATEGORIES else None
    priced_as = priced_category(category)
    result = Estimate(campaign=campaign, category=category, priced_as=priced_as, has_text=has_text, card=card,
                      marketing_frequency=str(marketing_frequency) if marketing_frequency else None)
    lines: dict[tuple[str, str], Line] = {}
    for group in groups:
        if group.count <= 0:
            continue
        country = group.country or UNKNOWN_COUNTRY
        result.total += group.count
        result.messages_by_country[country] = result.messages_by_country.get(country, 0) + group.count
        reason = skip_reason(group, category)
        text = has_text and group.in_window
        if reason is None and not text:
            if priced_as == "authentication" and group.phone_less:
                reason = "authentication_bsuid"
            elif priced_as == "marketing" and group.country == "US":
                reason = "us_marketing"
            elif category == "marketing" and group.frequency_capped:
                # As the claim decides (outbox._decide): a template of a campaign known to be
                # marketing; free-form text inside the window is not capped (`text` above).
                reason = "frequency_cap"
        if reason is not None:
            result.skipped[reason] = result.skipped.get(reason, 0) + group.count
            result.skipped_by_country[country] = result.skipped_by_country.get(country, 0) + group.count
            continue
        sent_as = SERVICE if text else priced_as
        free = text or (sent_as == "utility" and group.in_window)
        market = card.market_of(group.country)
        line = lines.get((country, sent_as))
        if line is None:
            line = lines[(country, sent_as)] = Line(country, market, sent_as,
                                                    rate=Decimal(0) if sent_as == SERVICE else card.rate(market, sent_as))
        line.messages += group.count
        line.in_window += group.count if group.in_window else 0
        if free:
            line.free += group.count
        else:
            line.billable += group.count
            line.cost += line.rate * group.count
        result.to_send += group.count
        result.in_window += group.count if group.in_window else 0
    result.lines = sorted(lines.values(), key=lambda line: (-line.cost, line.country, line.category))
    result.free = sum(line.free for line in result.lines)
    result.billable = sum(line.billable for line in result.lines)
    result.cost = sum((line.cost for line in result.lines), Decimal(0))
    return result


def price(card: RateCard, country: str | None, category: str | None) -> Decimal:
    """The card's price of one billable message of `category` to `country` (unknown category: marketing)."""
    return card.rate(card.market_of(country), priced_category(category))


# -- the database read -------------------------------------------------------------------------


def campaign_category(campaign: Any) -> str | None:
    """The campaign's template category: as given at create, else from its checked template."""
    category = campaign.template_category or ((campaign.template_definition or {}).get("category") or "").lower()
    return category if category in CATEGORIES else None


def read_groups(session: Any, campaign_id: int, *, now: datetime, unreachable_days: float,
                marketing_frequency: MarketingFrequency | None = None) -> list[Group]:
    """The queued messages of a campaign grouped by the facts the estimate needs: one grouped
    query (the database counts, Python sees one row per group, not per recipient).

    With `marketing_frequency` (pass it for a marketing campaign only), recipients past the
    cap now are told apart: the claim's own measure (outbox.marketing_templates_in_period),
    counted per contact by the database in a derived table joined to the campaign's rows."""
    from sqlalchemy import case, func, literal, select
    from sqlalchemy.orm import aliased

    from campaign.models import Campaign, Contact, Message, Suppression, in_state
    from campaign.outbox import marketing_templates_in_period
    from campaign.states import MessageState

    by_phone, by_user_id = aliased(Suppression), aliased(Suppression)
    prefix = func.substr(Contact.phone, 1, _PREFIX)
    bsuid = func.substr(Contact.user_id, 1, 2)
    window = case((Contact.last_inbound_at > now - WINDOW, literal(1)), else_=literal(0))
    unreachable = case((Contact.unreachable_at > now - timedelta(days=unreachable_days), literal(1)), else_=literal(0))
    phone_less = case((Contact.phone.is_(None), literal(1)), else_=literal(0))
    keys: list[Any] = [prefix, bsuid, window, unreachable, phone_less, by_phone.scope, by_user_id.scope]
    capped: Any = literal(0)
    past_cap = None
    if marketing_frequency is not None:
        past_cap = (
            select(Message.contact_id.label("contact_id"))
            .join(Campaign, Campaign.id == Message.campaign_id)
            .where(*marketing_templates_in_period(now, marketing_frequency.period))
            .group_by(Message.contact_id)
            .having(func.count() >= marketing_frequency.count)
            .subquery("past_cap")
        )
        capped = case((past_cap.c.contact_id.is_not(None), literal(1)), else_=literal(0))
    query = (
        select(*keys, capped, func.min(Contact.phone), func.count())
        .select_from(Message)
        .join(Contact, Contact.id == Message.contact_id)
        .outerjoin(by_phone, by_phone.phone == Contact.phone)
        .outerjoin(by_user_id, by_user_id.user_id == Contact.user_id)
        .where(Message.campaign_id == campaign_id, in_state(MessageState.QUEUED))
        .group_by(*keys)
    )
    if past_cap is not None:  # without the cap the query is as it was: no join, no extra key
        query = query.outerjoin(past_cap, past_cap.c.contact_id == Contact.id).group_by(capped)
    groups = []
    for pre, cc, in_window, gone, no_phone, scope_phone, scope_user, over, example, count in session.execute(query):
        groups.append(Group(
            country=country_of(example, cc if no_phone else None) if example or cc else None,
            count=int(count), in_window=bool(in_window), unreachable=bool(gone), phone_less=bool(no_phone),
            suppression_scopes=tuple(s for s in (scope_phone, scope_user) if s is not None),
            frequency_capped=bool(over),
        ))
    return groups


def estimate_campaign(db: Any, name: str, card: RateCard, *, now: datetime, unreachable_days: float,
                      marketing_frequency: MarketingFrequency | None = None) -> Estimate:
    """`campaign estimate NAME`: read the facts, then compute. The frequency cap is counted as
    if every message went now (the claim counts again when each one goes)."""
    from campaign import campaigns

    with db.read_session() as session:
        campaign = campaigns.get(session, name)
        category, has_text = campaign_category(campaign), campaign.text_body is not None
        groups = read_groups(session, campaign.id, now=now, unreachable_days=unreachable_days,
                             marketing_frequency=marketing_frequency if category == "marketing" else None)
    return estimate(groups, card, category=category, has_text=has_text, campaign=name,
                    marketing_frequency=marketing_frequency)
