"""The import's duplicate check at any size (issue 14): the identities already seen are kept as
int64 numbers in sorted runs, looked up a chunk at a time. Chunking must change nothing: each
file here is imported in one chunk and in chunks of one or a few rows, and the rejects agree."""

from __future__ import annotations

import csv
import random
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from campaign import campaigns, importer
from campaign.db import Database
from campaign.importer import ImportOptions, _Identities, _int_key, _int_keys, import_file
from campaign.models import Contact, ContactAlias

NUMBERS = [f"+4915123456{i:03d}" for i in range(30)] + [f"+447911123{i:03d}" for i in range(10)]
BSUID = "US.13491208655302741918"
OLD_BSUID = "US.55501"


def _campaign(db: Database, name: str) -> None:
    with db.session() as session:
        campaigns.create(session, campaigns.CampaignSpec(name, "hello_world", "en_US"))


def _rejects(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [(r["line"], r["reason"], r["detail"]) for r in csv.DictReader(f)]


def _import_chunked(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str,
                    chunks: tuple[int, ...] = (50_000, 1, 3), **options: object) -> list[tuple[str, str, str]]:
    """The file imported into a fresh campaign once per chunk size; the rejects, which must agree."""
    path = tmp_path / "r.csv"
    path.write_text(body, encoding="utf-8")
    found = []
    for rows in chunks:
        monkeypatch.setattr(importer, "CHUNK_ROWS", rows)
        name = f"c{rows}"
        _campaign(db, name)
        import_file(db, name, path, ImportOptions(rejects_path=tmp_path / f"{name}.csv", **options))  # type: ignore[arg-type]
        found.append(_rejects(tmp_path / f"{name}.csv"))
    assert all(f == found[0] for f in found), found
    return found[0]


def test_a_duplicate_names_the_first_line_whichever_chunk_it_was_in(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(14)
    rows = [rng.choice(NUMBERS) for _ in range(120)]
    spelled = [n if rng.random() < 0.5 else f"00{n[1:3]} {n[3:7]} {n[7:]}" for n in rows]
    body = "name,phone\n" + "".join(f"N{i},{p}\n" for i, p in enumerate(spelled))
    first: dict[str, int] = {}
    expected = []
    for line, number in enumerate(rows, start=2):
        if number in first:
            expected.append((str(line), "duplicate", f"{number} is also on line {first[number]}"))
        else:
            first[number] = line
    assert _import_chunked(db, tmp_path, monkeypatch, body) == expected


def test_one_person_by_number_and_by_bsuid_across_chunks(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A person known by both names, and an old BSUID of theirs; another known only by a BSUID.
    with db.session() as session:
        person = Contact(phone=NUMBERS[0], user_id=BSUID)
        session.add_all([person, Contact(user_id="GB.77")])
        session.flush()
        session.add(ContactAlias(identity=OLD_BSUID, contact_id=person.id, retired_at=datetime(2026, 1, 1, tzinfo=timezone.utc)))
    body = ("phone,user_id\n"
            f"{NUMBERS[0]},\n"        # 2: the person by number
            f"{NUMBERS[1]},GB.77\n"   # 3: the other person, now with a number
            f",{BSUID}\n"             # 4: the person by BSUID
            f",{OLD_BSUID}\n"         # 5: ... by an old BSUID
            ",GB.77\n"                # 6: the other person by BSUID
            f"{NUMBERS[1]},\n"        # 7: ... by number
            f"{NUMBERS[2]},US.999\n"  # 8: someone new by both
            ",US.999\n"               # 9
            f"{NUMBERS[2]},\n")       # 10
    found = _import_chunked(db, tmp_path, monkeypatch, body)
    assert [line for line, _, _ in found] == ["4", "5", "6", "7", "9", "10"]
    assert {reason for _, reason, _ in found} == {"duplicate"}
    assert found[0][2] == f"{BSUID} is also on line 2"
    assert found[1][2].startswith(f"{OLD_BSUID} is also on line 2")
    assert found[2:] == [("6", "duplicate", "GB.77 is also on line 3"), ("7", "duplicate", f"{NUMBERS[1]} is also on line 3"),
                         ("9", "duplicate", "US.999 is also on line 8"), ("10", "duplicate", f"{NUMBERS[2]} is also on line 8")]


def test_rows_already_in_the_campaign_are_found_whichever_chunk(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "CHUNK_ROWS", 4)
    _campaign(db, "spring")
    first = tmp_path / "first.csv"
    first.write_text("phone,user_id\n" + "".join(f"{n},\n" for n in NUMBERS[:25]) + ",US.4242\n", encoding="utf-8")
    assert import_file(db, "spring", first, ImportOptions(rejects_path=tmp_path / "a.csv")).imported == 26
    second = tmp_path / "second.csv"
    second.write_text("phone,user_id\n" + "".join(f"{n},\n" for n in reversed(NUMBERS)) + ",US.4242\n", encoding="utf-8")
    result = import_file(db, "spring", second, ImportOptions(rejects_path=tmp_path / "b.csv"))
    assert (result.imported, result.duplicate) == (15, 26)
    details = {detail for _, _, detail in _rejects(tmp_path / "b.csv")}
    assert details == {f"{n} is already in the campaign" for n in NUMBERS[:25]} | {"US.4242 is already in the campaign"}


def test_identities_find_what_was_added_across_merged_runs() -> None:
    rng = np.random.default_rng(14)
    universe = rng.choice(10**14, size=20_000, replace=False) + 10**10
    added: dict[int, int] = {}
    identities = _Identities()
    line = 2
    for size in rng.integers(0, 700, size=60):
        batch = [int(k) for k in rng.choice(universe, size=size) if int(k) not in added]
        batch = list(dict.fromkeys(batch))
        lines = list(range(line, line + len(batch)))
        line += len(batch)
        added.update(zip(batch, lines))
        identities.add_keys(np.array(batch, np.int64), np.array(lines, np.int32))
        assert len(identities.runs) <= 1 + int(np.log2(max(len(added), 1)))
    assert all(np.all(np.diff(keys) > 0) for keys, _ in identities.runs)
    wanted = [int(k) for k in rng.choice(universe, size=5_000)] + [0]
    values = [f"+{k}" if k else None for k in wanted]
    found = identities.find(values, np.array(wanted, np.int64))  # type: ignore[arg-type]
    assert found == {f"+{k}": added[k] for k in wanted if k in added}
    assert len(identities) == len(added)


def test_identities_keep_only_bsuids_and_odd_values_as_strings() -> None:
    identities = _Identities()
    identities.add([NUMBERS[0], BSUID, None, "#12", "+0123"], 7)
    assert identities.others == {BSUID: 7, "+0123": 7}
    values = [NUMBERS[0], NUMBERS[1], "#12", "#13"]
    assert identities.find(values, np.array([_int_key(v) for v in values])) == {NUMBERS[0]: 7, "#12": 7}


@pytest.mark.parametrize(("value", "key"), [
    ("+4915123456789", 4915123456789), ("+1" + "9" * 17, int("1" + "9" * 17)), ("+1" + "9" * 18, 0),
    ("+0123", 0), ("+", 0), ("4915123456789", 0), ("+49 151", 0), ("+４９１５１", 0), ("+٤٩١٥١", 0),
    ("#12", -12), ("#012", 0), ("#", 0), ("#1" + "2" * 18, 0), (BSUID, 0), ("", 0), (None, 0),
])
def test_an_int_key_is_a_number_or_a_contact_and_nothing_else(value: str | None, key: int) -> None:
    assert _int_key(value) == key
    assert _int_keys([value, NUMBERS[0]]).tolist() == [key, int(NUMBERS[0][1:])]


def test_numbers_go_to_the_workers_and_back_with_their_keys(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "PARALLEL_FROM_BYTES", 0)
    monkeypatch.setattr(importer, "CHUNK_ROWS", 5)
    body = "name,phone\n" + "".join(f"N{i},{NUMBERS[i % 12]}\n" for i in range(30))
    _campaign(db, "spring")
    path = tmp_path / "r.csv"
    path.write_text(body, encoding="utf-8")
    result = import_file(db, "spring", path, ImportOptions(rejects_path=tmp_path / "rej.csv"))
    assert (result.imported, result.duplicate) == (12, 18)
    assert _rejects(tmp_path / "rej.csv")[-1] == ("31", "duplicate", f"{NUMBERS[5]} is also on line 7")
    with db.read_session() as session:
        assert session.scalar(select(Contact.phone).where(Contact.phone == NUMBERS[11])) == NUMBERS[11]
