"""The contacts check: what the engine knows first, then the endpoint, cached for 7 days."""

from __future__ import annotations

from datetime import timedelta
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from sqlalchemy import select, update

from campaign import campaigns
from campaign.contacts import ContactsEndpoint
from campaign.db import Database
from campaign.graph import GraphClient
from campaign.importer import ImportOptions, import_file
from campaign.clock import utcnow
from campaign.models import Contact
from campaign.sandbox.server import BackgroundServer

ROWS = "name,phone\nA,+4915123456789\nB,+447911123456\nC,+33612345678\n"


class FakeContactsApi:
    """Answers the contacts endpoint like the On-Premises API did, over HTTP; records what it was asked."""

    def __init__(self, invalid: set[str], status: int = 200) -> None:
        self.invalid = invalid
        self.status = status
        self.asked: list[list[str]] = []

    async def handler(self, request: Request) -> JSONResponse:
        assert request.url.path == "/v21.0/PNID/contacts"
        assert request.headers["authorization"] == "Bearer token"
        numbers = (await request.json())["contacts"]
        self.asked.append(numbers)
        if self.status != 200:
            return JSONResponse({"error": {"message": "Unsupported post request", "code": 100}}, self.status)
        return JSONResponse({"contacts": [
            {"input": n, "status": "invalid"} if n in self.invalid else {"input": n, "status": "valid", "wa_id": n[1:]}
            for n in numbers
        ]})


FakeApi = Callable[..., tuple[FakeContactsApi, ContactsEndpoint]]


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    """A fake contacts API served on a loopback port, and an endpoint that asks it."""
    servers: list[BackgroundServer] = []

    def serve(invalid: set[str], status: int = 200) -> tuple[FakeContactsApi, ContactsEndpoint]:
        api = FakeContactsApi(invalid, status)
        server = BackgroundServer(Starlette(routes=[Route("/v21.0/PNID/contacts", api.handler, methods=["POST"])])).start()
        servers.append(server)
        return api, ContactsEndpoint(lambda: GraphClient(server.url, "v21.0", "token"), "PNID")

    yield serve
    for server in servers:
        server.stop()


@pytest.fixture
def spring(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    with db.session() as session:
        campaigns.create(session, campaigns.CampaignSpec("spring", "hello_world", "en_US"))
    path = tmp_path / "r.csv"
    path.write_text(ROWS, encoding="utf-8")
    return path


def test_numbers_not_on_whatsapp_are_rejected_and_the_answer_cached(db: Database, spring: Path, fake_api: FakeApi) -> None:
    api, endpoint = fake_api(invalid={"+447911123456"})
    result = import_file(db, "spring", spring, ImportOptions(check_contacts=True), contacts_endpoint=endpoint)
    assert (result.imported, result.not_on_whatsapp) == (2, 1)
    assert sorted(api.asked[0]) == ["+33612345678", "+447911123456", "+4915123456789"]
    with db.read_session() as session:
        checked = {c.phone: (c.wa_status, c.wa_checked_at is not None) for c in session.scalars(select(Contact))}
    assert checked["+447911123456"] == ("invalid", True) and checked["+4915123456789"] == ("valid", True)


def test_a_recent_check_is_not_repeated_but_an_old_one_is(db: Database, spring: Path, fake_api: FakeApi) -> None:
    api, endpoint = fake_api(invalid={"+447911123456"})
    with db.session() as session:
        campaigns.create(session, campaigns.CampaignSpec("again", "hello_world", "en_US"))
    import_file(db, "spring", spring, ImportOptions(check_contacts=True), contacts_endpoint=endpoint)
    with db.session() as session:
        session.execute(update(Contact).where(Contact.phone == "+33612345678").values(wa_checked_at=utcnow() - timedelta(days=8)))
    result = import_file(db, "again", spring, ImportOptions(check_contacts=True), contacts_endpoint=endpoint)
    assert api.asked[1] == ["+33612345678"]  # only the stale one
    assert result.not_on_whatsapp == 1  # the cached invalid one


def test_a_number_that_failed_with_131026_is_known_unreachable_without_asking(db: Database, spring: Path, fake_api: FakeApi) -> None:
    with db.session() as session:
        session.add(Contact(phone="+33612345678", unreachable_at=utcnow()))
    api, endpoint = fake_api(invalid=set())
    result = import_file(db, "spring", spring, ImportOptions(check_contacts=True), contacts_endpoint=endpoint)
    assert result.not_on_whatsapp == 1
    assert "+33612345678" not in api.asked[0]


def test_a_provider_without_the_endpoint_falls_back_with_a_warning(db: Database, spring: Path, fake_api: FakeApi) -> None:
    api, endpoint = fake_api(invalid=set(), status=400)
    result = import_file(db, "spring", spring, ImportOptions(check_contacts=True), contacts_endpoint=endpoint)
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
