"""The contacts check: what the engine knows first, then the endpoint, cached for 7 days."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from campaign import campaigns
from campaign.contacts import ContactsEndpoint
from campaign.db import Database
from campaign.graph import GraphClient
from campaign.importer import ImportOptions, import_file
from campaign.models import Contact, utcnow

ROWS = "name,phone\nA,+4915123456789\nB,+447911123456\nC,+33612345678\n"


class FakeContactsApi:
    """Answers the contacts endpoint like the On-Premises API did; records what it was asked."""

    def __init__(self, invalid: set[str], status: int = 200) -> None:
        self.invalid = invalid
        self.status = status
        self.asked: list[list[str]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v21.0/PNID/contacts"
        assert request.headers["authorization"] == "Bearer token"
        numbers = json.loads(request.content)["contacts"]
        self.asked.append(numbers)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "Unsupported post request", "code": 100}})
        return httpx.Response(200, json={"contacts": [
            {"input": n, "status": "invalid"} if n in self.invalid else {"input": n, "status": "valid", "wa_id": n[1:]}
            for n in numbers
        ]})

    def endpoint(self) -> ContactsEndpoint:
        transport = httpx.MockTransport(self.handler)
        return ContactsEndpoint(lambda: GraphClient("http://graph.test", "v21.0", "token", transport=transport), "PNID")


@pytest.fixture
def spring(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    with db.session() as session:
        campaigns.create(session, campaigns.CampaignSpec("spring", "hello_world", "en_US"))
    path = tmp_path / "r.csv"
    path.write_text(ROWS, encoding="utf-8")
    return path


def test_numbers_not_on_whatsapp_are_rejected_and_the_answer_cached(db: Database, spring: Path) -> None:
    api = FakeContactsApi(invalid={"+447911123456"})
    result = import_file(db, "spring", spring, ImportOptions(check_contacts=True), contacts_endpoint=api.endpoint())
    assert (result.imported, result.not_on_whatsapp) == (2, 1)
    assert sorted(api.asked[0]) == ["+33612345678", "+447911123456", "+4915123456789"]
    with db.read_session() as session:
        checked = {c.phone: (c.wa_status, c.wa_checked_at is not None) for c in session.scalars(select(Contact))}
    assert checked["+447911123456"] == ("invalid", True) and checked["+4915123456789"] == ("valid", True)


def test_a_recent_check_is_not_repeated_but_an_old_one_is(db: Database, spring: Path) -> None:
    api = FakeContactsApi(invalid={"+447911123456"})
    with db.session() as session:
        campaigns.create(session, campaigns.CampaignSpec("again", "hello_world", "en_US"))
    import_file(db, "spring", spring, ImportOptions(check_contacts=True), contacts_endpoint=api.endpoint())
    with db.session() as session:
        session.execute(update(Contact).where(Contact.phone == "+33612345678").values(wa_checked_at=utcnow() - timedelta(days=8)))
    result = import_file(db, "again", spring, ImportOptions(check_contacts=True), contacts_endpoint=api.endpoint())
    assert api.asked[1] == ["+33612345678"]  # only the stale one
    assert result.not_on_whatsapp == 1  # the cached invalid one


def test_a_number_that_failed_with_131026_is_known_unreachable_without_asking(db: Database, spring: Path) -> None:
    with db.session() as session:
        session.add(Contact(phone="+33612345678", unreachable_at=utcnow()))
    api = FakeContactsApi(invalid=set())
    result = import_file(db, "spring", spring, ImportOptions(check_contacts=True), contacts_endpoint=api.endpoint())
    assert result.not_on_whatsapp == 1
    assert "+33612345678" not in api.asked[0]


def test_a_provider_without_the_endpoint_falls_back_with_a_warning(db: Database, spring: Path) -> None:
    api = FakeContactsApi(invalid=set(), status=400)
    result = import_file(db, "spring", spring, ImportOptions(check_contacts=True), contacts_endpoint=api.endpoint())
    assert result.imported == 3
    assert any("no contacts check" in w for w in result.warnings)


def test_without_check_contacts_no_request_is_made(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "r.csv").write_text(ROWS, encoding="utf-8")
    cli("create", "spring", "--template", "hello_world", "--language", "en_US")
    # An unreachable API: any request would fail the import.
    env = {"WA_ACCESS_TOKEN": "token", "WA_PHONE_NUMBER_ID": "PNID", "WA_API_BASE_URL": "http://127.0.0.1:9"}
    result = cli("import", "spring", "r.csv", env=env)
    assert result.exit_code == 0 and result.stdout.startswith("imported 3,")
    failing = cli("import", "spring", "r.csv", "--check-contacts", env=env)
    assert failing.exit_code == 1 and failing.stderr.startswith("error: contacts check failed: cannot reach the Graph API")
