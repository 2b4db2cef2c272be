"""Settings: environment over .env, options over both; secrets never shown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from campaign.config import RedactSecrets, Settings, load_settings
from campaign.exceptions import CampaignError


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("CAMPAIGN_MPS=20\nWA_PHONE_NUMBER_ID=111\nWA_ACCESS_TOKEN=from-file\n", encoding="utf-8")
    settings = load_settings({"CAMPAIGN_MPS": "40"}, dotenv)
    assert (settings.mps, settings.phone_number_id, settings.access_token) == (40, "111", "from-file")


def test_defaults_match_the_interface() -> None:
    settings = load_settings({}, None)
    assert settings == Settings()
    assert (settings.database_url, settings.api_base_url, settings.api_version) == (
        "sqlite:///campaign.db", "https://graph.facebook.com", "v21.0",
    )
    assert (settings.mps, settings.pair_interval, settings.daily_unique_limit) == (80, 6.0, None)


def test_options_win_over_everything() -> None:
    settings = load_settings({"CAMPAIGN_DATABASE_URL": "sqlite:///a.db"}, None).with_overrides(database_url="sqlite:///b.db", mps=None)
    assert settings.database_url == "sqlite:///b.db" and settings.mps == 80


@pytest.mark.parametrize(("variable", "value"), [("CAMPAIGN_MPS", "fast"), ("CAMPAIGN_PAIR_INTERVAL", "-1")])
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(CampaignError, match=variable):
        load_settings({variable: value}, None)


def test_secrets_are_not_in_repr_and_are_redacted_from_logs(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"WA_ACCESS_TOKEN": "EAAGsecret123", "WA_APP_SECRET": "appsecret456"}, None)
    assert "EAAGsecret123" not in repr(settings) and "appsecret456" not in repr(settings)
    logger = logging.getLogger("test.redact")
    logger.addFilter(RedactSecrets(settings.secrets()))
    with caplog.at_level(logging.INFO, logger="test.redact"):
        logger.info("calling with token %s and %s", "EAAGsecret123", "appsecret456")
    assert caplog.messages == ["calling with token *** and ***"]
