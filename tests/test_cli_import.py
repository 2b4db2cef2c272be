"""`campaign create / import / status` as a user runs them, bad input included."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

GOOD = "name,phone,order\nJosé,+49 1512 3456789,A1\nZoë,+44 7911 123456,A2\n"


@pytest.fixture
def spring(cli):  # type: ignore[no-untyped-def]
    result = cli("create", "spring", "--template", "order_update", "--language", "en_US", "--param", "name", "--param", "order")
    assert result.exit_code == 0, result.output
    return cli


def status_total(cli) -> int:  # type: ignore[no-untyped-def]
    result = cli("status", "spring", "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["total"]


def test_import_prints_the_summary_line_and_status_counts_the_outbox(spring, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "r.csv").write_text(GOOD + "Bob,12345,A3\n", encoding="utf-8")
    result = spring("import", "spring", "r.csv")
    assert result.exit_code == 0
    assert result.stdout.strip() == "imported 2, rejected 1 (invalid 1, duplicate 0, suppressed 0, not_on_whatsapp 0)"
    assert (tmp_path / "spring-rejects.csv").read_text(encoding="utf-8").splitlines()[1].startswith("4,invalid_number,")
    status = json.loads(spring("status", "spring", "--json").stdout)
    assert (status.pop("rate"), status.pop("eta_seconds")) == (0, None)  # nothing sent yet
    assert status == {
        "name": "spring",
        "state": "draft",
        "total": 2,
        "counts": {"queued": 2, "sending": 0, "sent": 0, "delivered": 0, "read": 0, "failed": 0, "skipped": 0, "cancelled": 0},
    }


def test_import_json_prints_the_same_figures(spring, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "r.csv").write_text(GOOD + "Dup,0044 7911 123456,A3\n", encoding="utf-8")
    figures = json.loads(spring("import", "spring", "r.csv", "--json", "--rejects", "out.csv").stdout)
    assert {k: figures[k] for k in ("imported", "rejected", "invalid", "duplicate", "suppressed", "not_on_whatsapp")} == {
        "imported": 2, "rejected": 1, "invalid": 0, "duplicate": 1, "suppressed": 0, "not_on_whatsapp": 0,
    }
    assert (tmp_path / "out.csv").exists()


def test_suppressed_numbers_are_not_imported(spring, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert spring("suppress", "+44 7911 123456", "--reason", "asked").stdout.strip() == "suppressed 1 number"
    (tmp_path / "r.csv").write_text(GOOD, encoding="utf-8")
    assert "suppressed 1" in spring("import", "spring", "r.csv").stdout
    assert spring("unsuppress", "+447911123456").stdout.strip() == "unsuppressed 1 number"


def test_suppress_reads_a_file_of_numbers(spring, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "optouts.txt").write_text("+49 1512 3456789\n\n0044 7911 123456\n", encoding="utf-8")
    assert spring("suppress", "--file", "optouts.txt").stdout.strip() == "suppressed 2 numbers"
    (tmp_path / "r.csv").write_text(GOOD, encoding="utf-8")
    assert "imported 0, rejected 2 (invalid 0, duplicate 0, suppressed 2" in spring("import", "spring", "r.csv").stdout


def test_status_without_name_lists_campaigns(spring) -> None:  # type: ignore[no-untyped-def]
    result = spring("status")
    assert result.exit_code == 0 and "spring" in result.stdout and "draft" in result.stdout


def test_create_refuses_an_existing_name(spring) -> None:  # type: ignore[no-untyped-def]
    result = spring("create", "spring", "--template", "hello_world", "--language", "en_US")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: a campaign named 'spring' already exists"


def _garbage() -> bytes:
    rng = random.Random(3)
    return bytes(rng.randrange(256) for _ in range(4096))


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ("spring", "missing.csv"), "error: missing.csv: no such file"),
        (b"", ("spring", "f.csv"), "error: f.csv: the file is empty"),
        (b"\xef\xbb\xbf\n\n", ("spring", "f.csv"), "error: f.csv: the file is empty"),
        (b"name,email,order\nA,a@x.org,1\n", ("spring", "f.csv"), "error: f.csv: no phone column in the header"),
        (b"name,phone\nA,+4915123456789\n", ("spring", "f.csv"), "error: f.csv: column 'order' (--param of campaign 'spring') is not in the header"),
        (b"name,phone,order\n", ("spring", "f.csv"), "error: f.csv: has a header but no rows"),
        ("name,phone,order\nA,+4915123456789,1\nRen\xe9e,+447911123456,2\n".encode("latin-1"), ("spring", "f.csv"), "error: f.csv: line 3 is not valid UTF-8"),
        (_garbage(), ("spring", "f.csv"), "error: f.csv: line "),
        (b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 64, ("spring", "f.csv"), "error: f.csv: line 1 holds a NUL byte"),
        (GOOD.encode(), ("nope", "f.csv"), "error: no campaign named 'nope'"),
        (GOOD.encode(), ("spring", "f.csv", "--phone-column", "tel"), "error: f.csv: --phone-column 'tel' is not in the header"),
        (GOOD.encode(), ("spring", "f.csv", "--default-region", "XX"), "error: --default-region 'XX' is not a region code"),
    ],
    ids=["missing", "empty", "blank", "no-phone-column", "param-missing", "header-only", "latin1", "garbage", "zip",
         "no-campaign", "phone-column", "region"],
)
def test_bad_input_is_one_error_line_exit_1_and_nothing_imported(  # type: ignore[no-untyped-def]
    spring, tmp_path: Path, setup: bytes | None, args: tuple[str, ...], message: str
) -> None:
    if setup is not None:
        (tmp_path / "f.csv").write_bytes(setup)
    result = spring("import", *args)
    assert result.exit_code == 1
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert status_total(spring) == 0
    assert not (tmp_path / "spring-rejects.csv").exists()


def test_importing_into_a_cancelled_campaign_is_refused(spring, database_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE campaigns SET state = 'cancelled'"))
    engine.dispose()
    (tmp_path / "f.csv").write_text(GOOD, encoding="utf-8")
    result = spring("import", "spring", "f.csv")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: campaign 'spring' is cancelled: it takes no more recipients"
