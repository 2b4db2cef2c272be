"""Settings: the environment, then a `.env` file in the working directory; a CLI option wins over both.

Secrets (the access token and the app secret) live only here, in memory: they are never
written to the database, never printed, and `redact` scrubs them from log lines.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from dotenv import dotenv_values

from campaign.exceptions import CampaignError
from campaign.policy import MarketingFrequency, parse_marketing_frequency

DEFAULT_DATABASE_URL = "sqlite:///campaign.db"


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    api_base_url: str = "https://graph.facebook.com"
    api_version: str = "v21.0"
    access_token: str | None = field(default=None, repr=False)
    phone_number_id: str | None = None
    business_account_id: str | None = None
    app_secret: str | None = field(default=None, repr=False)
    verify_token: str | None = field(default=None, repr=False)
    mps: int = 80
    pair_interval: float = 6.0
    daily_unique_limit: int | None = None
    redis_url: str | None = None
    """Where workers share the send cap's guard, when set (else the database does)."""
    lease: float = 30.0
    """Seconds a worker holds claimed messages; a dead worker's claims return after it."""
    send_grace: float = 600.0
    """Seconds an in-doubt message waits for a status webhook before it may be sent again."""
    server_error_grace: float = 60.0
    """The same, for a send Meta answered with a 5xx (it may have sent it all the same): shorter,
    since Meta answered and its `sent` status, if any, comes within seconds."""
    explicit: frozenset[str] = field(default=frozenset(), repr=False)
    """The fields the environment, `.env` or an option set (the rest are defaults): an explicit
    `CAMPAIGN_MPS` wins over the throughput Meta reports for a sender (health.py)."""

    def is_explicit(self, name: str) -> bool:
        return name in self.explicit
    marketing_retry_after: float = 86400.0
    """Seconds a message refused by Meta's per-user marketing limit (131049) waits to go again."""
    marketing_retries: int = 3
    """How many times such a message goes again before it fails for good."""
    unreachable_days: float = 30.0
    """A number that failed with 131026 is skipped by later campaigns for this many days."""
    breaker_window: int = 300
    """The failure-rate breaker judges each campaign's latest this-many outcomes..."""
    breaker_threshold: float = 0.3
    """...and pauses it when more than this share failed with errors that hurt the number's
    quality rating (breaker.py); 0 turns it off."""
    marketing_frequency: MarketingFrequency | None = None
    """CAMPAIGN_MARKETING_FREQUENCY (`2/7d`): at most that many marketing templates per
    recipient in any moving period, across campaigns; None (the default) is no cap."""

    def secrets(self) -> list[str]:
        return [s for s in (self.access_token, self.app_secret, self.verify_token) if s]

    def with_overrides(self, **overrides: object) -> Settings:
        """Command-line options win; `None` means the option was not given."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given, explicit=self.explicit | given.keys())


# environment variable -> (Settings field, parser); a parser other than int, float and str
# raises ValueError with a phrase that follows the variable's name in the error line.
_VARIABLES: dict[str, tuple[str, Callable[[str], object]]] = {
    "CAMPAIGN_DATABASE_URL": ("database_url", str),
    "WA_API_BASE_URL": ("api_base_url", str),
    "WA_API_VERSION": ("api_version", str),
    "WA_ACCESS_TOKEN": ("access_token", str),
    "WA_PHONE_NUMBER_ID": ("phone_number_id", str),
    "WA_BUSINESS_ACCOUNT_ID": ("business_account_id", str),
    "WA_APP_SECRET": ("app_secret", str),
    "WA_VERIFY_TOKEN": ("verify_token", str),
    "CAMPAIGN_MPS": ("mps", int),
    "CAMPAIGN_PAIR_INTERVAL": ("pair_interval", float),
    "CAMPAIGN_DAILY_UNIQUE_LIMIT": ("daily_unique_limit", int),
    "CAMPAIGN_REDIS_URL": ("redis_url", str),
    "CAMPAIGN_LEASE": ("lease", float),
    "CAMPAIGN_SEND_GRACE": ("send_grace", float),
    "CAMPAIGN_SERVER_ERROR_GRACE": ("server_error_grace", float),
    "CAMPAIGN_MARKETING_RETRY_AFTER": ("marketing_retry_after", float),
    "CAMPAIGN_MARKETING_RETRIES": ("marketing_retries", int),
    "CAMPAIGN_UNREACHABLE_DAYS": ("unreachable_days", float),
    "CAMPAIGN_BREAKER_WINDOW": ("breaker_window", int),
    "CAMPAIGN_BREAKER_THRESHOLD": ("breaker_threshold", float),
    "CAMPAIGN_MARKETING_FREQUENCY": ("marketing_frequency", parse_marketing_frequency),
}
_ZERO_ALLOWED = {"pair_interval", "send_grace", "server_error_grace", "marketing_retry_after", "marketing_retries", "unreachable_days",
                 "breaker_threshold"}
assert {name for name, _ in _VARIABLES.values()} <= {f.name for f in fields(Settings)}


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv_path: str | Path | None = ".env"
) -> Settings:
    """Settings from `.env` overlaid by the process environment (the environment wins)."""
    values: dict[str, str | None] = {}
    if dotenv_path is not None and Path(dotenv_path).is_file():
        values.update(dotenv_values(dotenv_path))
    values.update(os.environ if environ is None else environ)
    kwargs: dict[str, object] = {}
    for variable, (name, parse) in _VARIABLES.items():
        raw = values.get(variable)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = parse(raw.strip())
        except ValueError as exc:
            if parse in (int, float, str):
                raise CampaignError(f"{variable}={raw!r} is not a valid {parse.__name__}") from None
            raise CampaignError(f"{variable}={raw!r} {exc}") from None
        if isinstance(value, (int, float)) and (value < 0 or (value == 0 and name not in _ZERO_ALLOWED)):
            raise CampaignError(f"{variable} must be {'at least' if name in _ZERO_ALLOWED else 'greater than'} 0, not {raw}")
        kwargs[name] = value
    return Settings(**kwargs, explicit=frozenset(kwargs))  # type: ignore[arg-type]


class RedactSecrets(logging.Filter):
    """Replaces every configured secret in a log record with `***`."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = record.getMessage()
            redacted = redact(message, self._secrets)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
