"""Importing recipients: what lands in the outbox, what is rejected and why."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from campaign import campaigns, importer, suppressions
from campaign.db import Database
from campaign.exceptions import CampaignError
from campaign.importer import ImportOptions, import_file
from campaign.models import Campaign, Contact, Import, Message

HEADER = "name,phone,order_id\n"


def make_campaign(db: Database, name: str = "spring", params: list[str] | None = None, **kwargs: object) -> None:
    with db.session() as session:
        campaigns.create(session, campaigns.CampaignSpec(name, "order_update", "en_US", params or [], **kwargs))  # type: ignore[arg-type]


def write(tmp_path: Path, body: str, name: str = "r.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(body.encode(encoding))
    return path


def queued(db: Database, name: str = "spring") -> dict[str, dict[str, str]]:
    """E.164 -> the row kept for it, for the campaign's messages."""
    with db.read_session() as session:
        rows = session.execute(
            select(Contact.phone, Message.params, Message.state)
            .join(Message, Message.contact_id == Contact.id)
            .join(Campaign, Campaign.id == Message.campaign_id)
            .where(Campaign.name == name)
        )
        return {phone: {**params, "_state": state} for phone, params, state in rows}


def rejects(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # default rejects files land here


def test_rows_become_queued_messages_with_their_row_values(db: Database, tmp_path: Path) -> None:
    make_campaign(db, params=["name", "order_id"])
    path = write(tmp_path, HEADER + "José,+49 1512 3456789,000123\nZoë,+44 7911 123456,4915123456789012345\n")
    result = import_file(db, "spring", path, ImportOptions(rejects_path=tmp_path / "rej.csv"))
    assert (result.imported, result.rejected) == (2, 0)
    rows = queued(db)
    assert rows["+4915123456789"] == {"name": "José", "phone": "+49 1512 3456789", "order_id": "000123", "_state": "queued"}
    assert rows["+447911123456"]["order_id"] == "4915123456789012345"  # long digit strings stay text
    assert not (tmp_path / "rej.csv").exists()


def test_each_rejected_row_goes_to_the_rejects_file_with_its_reason(db: Database, tmp_path: Path) -> None:
    make_campaign(db, params=["name"])
    with db.session() as session:
        suppressions.suppress(session, ["+447911123456"], reason="asked by phone")
    path = write(
        tmp_path,
        HEADER
        + "Ana,015123456789,1\n"  # national, region DE
        + "Ana again,+49 1512 3456789,2\n"  # the same number, another format
        + "Bob,12345,3\n"
        + "Cara,+44 7911 123456,4\n"
        + ",+33 6 12 34 56 78,5\n"  # no name for {{1}}
        + "Dan,4915123456789.0,6\n",
    )
    result = import_file(db, "spring", path, ImportOptions(default_region="DE", rejects_path=tmp_path / "rej.csv"))
    assert result.summary_line() == (
        "imported 1, rejected 5 (invalid 2, duplicate 1, suppressed 1, not_on_whatsapp 0, bad_param 1)"
    )
    found = {(r["line"], r["reason"]) for r in rejects(tmp_path / "rej.csv")}
    assert found == {("3", "duplicate"), ("4", "invalid_number"), ("5", "suppressed"), ("6", "bad_param"), ("7", "invalid_number")}
    spreadsheet = next(r for r in rejects(tmp_path / "rej.csv") if r["line"] == "7")
    assert "spreadsheet" in spreadsheet["detail"] and spreadsheet["name"] == "Dan"
    assert list(queued(db)) == ["+4915123456789"]


def test_numbers_already_in_the_campaign_are_duplicates(db: Database, tmp_path: Path) -> None:
    make_campaign(db)
    import_file(db, "spring", write(tmp_path, HEADER + "A,+4915123456789,1\n"), ImportOptions(rejects_path=tmp_path / "a.csv"))
    result = import_file(
        db, "spring", write(tmp_path, HEADER + "A,0049 1512 3456789,1\nB,+447911123456,2\n", "b.csv"),
        ImportOptions(rejects_path=tmp_path / "b-rej.csv"),
    )
    assert (result.imported, result.duplicate) == (1, 1)
    assert "already in the campaign" in rejects(tmp_path / "b-rej.csv")[0]["detail"]


def test_a_number_in_two_campaigns_is_one_contact(db: Database, tmp_path: Path) -> None:
    make_campaign(db, "one")
    make_campaign(db, "two")
    path = write(tmp_path, HEADER + "A,+4915123456789,1\n")
    import_file(db, "one", path)
    import_file(db, "two", path)
    with db.read_session() as session:
        assert session.scalar(select(func.count()).select_from(Contact)) == 1
        assert session.scalar(select(func.count()).select_from(Message)) == 2


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_the_delimiter_is_sniffed_and_a_bom_is_ignored(db: Database, tmp_path: Path, delimiter: str) -> None:
    make_campaign(db, params=["name"])
    body = "\ufeff" + delimiter.join(["name", "Phone", "city"]) + "\n" + delimiter.join(["Zoë", "+4915123456789", '"Köln; Mitte, Süd"']) + "\n"
    result = import_file(db, "spring", write(tmp_path, body))
    assert result.imported == 1
    assert queued(db)["+4915123456789"] == {"name": "Zoë", "Phone": "+4915123456789", "city": "Köln; Mitte, Süd", "_state": "queued"}


def test_a_first_row_longer_than_the_header_is_a_structural_error(db: Database, tmp_path: Path) -> None:
    make_campaign(db)
    with pytest.raises(CampaignError, match="line 2 has more fields than the header"):
        import_file(db, "spring", write(tmp_path, HEADER + "A,+4915123456789,1,surprise\n"))
    assert queued(db) == {}


def test_a_wa_id_column_holds_international_digits(db: Database, tmp_path: Path) -> None:
    make_campaign(db)
    result = import_file(db, "spring", write(tmp_path, "wa_id,name\n4915123456789,A\n"), ImportOptions(default_region="US"))
    assert result.imported == 1 and "+4915123456789" in queued(db)


def test_marketing_to_us_numbers_is_warned_and_counted(db: Database, tmp_path: Path) -> None:
    make_campaign(db, category="marketing")
    result = import_file(db, "spring", write(tmp_path, HEADER + "A,+1 201 555 0123,1\nB,+1 416 555 0123,2\nC,+4915123456789,3\n"))
    assert result.imported == 3 and result.us_numbers == 1
    assert any("marketing templates" in w for w in result.warnings)


def test_a_structural_error_late_in_the_file_imports_nothing(db: Database, tmp_path: Path) -> None:
    make_campaign(db)
    good = "".join(f"N{i},+4915123{i:06d},{i}\n" for i in range(300))
    path = write(tmp_path, HEADER + good + "X,+447911123456,1,extra,fields\n")
    with pytest.raises(CampaignError, match=r"r\.csv: Expected 3 fields in line 302, saw 5"):
        import_file(db, "spring", path, ImportOptions(rejects_path=tmp_path / "rej.csv"))
    assert queued(db) == {}
    assert not (tmp_path / "rej.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if "rej" in p.name] == []


def test_the_parallel_path_gives_the_same_result(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "PARALLEL_FROM_BYTES", 0)
    monkeypatch.setattr(importer, "CHUNK_ROWS", 7)
    make_campaign(db)
    rows = [f"N{i},+4915123{i:06d},{i}\n" for i in range(50)] + ["Bad,123,x\n", "Dup,+49 15123 000007,y\n"]
    result = import_file(db, "spring", write(tmp_path, HEADER + "".join(rows)), ImportOptions(rejects_path=tmp_path / "r.csv"))
    assert (result.imported, result.invalid, result.duplicate) == (50, 1, 1)
    assert queued(db)["+4915123000049"]["name"] == "N49"
    with db.read_session() as session:
        record = session.scalars(select(Import)).one()
        assert (record.rows, record.imported, record.rejected) == (52, 50, 2)


@pytest.mark.parametrize("state", ["cancelled", "completed"])
def test_a_finished_campaign_takes_no_recipients(db: Database, tmp_path: Path, state: str) -> None:
    make_campaign(db)
    with db.session() as session:
        session.execute(update(Campaign).values(state=state))
    with pytest.raises(CampaignError, match=f"campaign 'spring' is {state}"):
        import_file(db, "spring", write(tmp_path, HEADER + "A,+4915123456789,1\n"))


def test_import_result_as_json_has_the_interface_keys() -> None:
    keys = set(json.loads(json.dumps(importer.ImportResult().as_dict())))
    assert {"imported", "rejected", "invalid", "duplicate", "suppressed", "not_on_whatsapp"} <= keys


def test_a_marketing_opt_out_keeps_the_number_out_of_marketing_campaigns_only(db: Database, tmp_path: Path) -> None:
    from campaign.states import SuppressionScope

    with db.session() as session:
        suppressions.suppress(session, ["+4915123456789"], reason="tapped Stop promotions", scope=SuppressionScope.MARKETING)
    path = write(tmp_path, HEADER + "Ana,+49 1512 3456789,1\n")
    for name, category, imported in (("promo", "marketing", 0), ("receipt", "utility", 1)):
        make_campaign(db, name=name, params=["name"], category=category)
        assert import_file(db, name, path, ImportOptions(rejects_path=tmp_path / f"{name}.csv")).imported == imported
