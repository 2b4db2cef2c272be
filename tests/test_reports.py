"""Reports out: one row per recipient in four formats (export.py), the summary's figures
(summary.py) and their text (render.py), the chart (chart.py).

The database tests share one hand-built campaign, `spring`, with a message in every state
and known times, so every figure of the summary has an exact expected value.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, update

from campaign import campaigns, chart, export, render, summary
from campaign.db import Database
from campaign.exceptions import CampaignError
from campaign.importer import ImportOptions, import_file
from campaign.models import Contact, Message

sys.path.insert(0, str(Path(__file__).parent))

from dispatch_helpers import phones, seed  # noqa: E402

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(hours=2)
PHONES = phones(12)
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# What each of spring's messages is: its state and the columns that differ from the defaults.
SPRING: list[dict[str, Any]] = [
    dict(state="queued", error_code=131000, error_title="Something went wrong", next_attempt_at=NOW + timedelta(minutes=5)),
    dict(state="sending", sending_at=at(5), lease_owner="w1", lease_expires_at=at(65), attempts=1),
    dict(state="sent", wamid="wamid.2", wa_id="4915123000002", sent_at=at(0), attempts=1),
    dict(state="delivered", wamid="wamid.3", wa_id="4915123000003", sent_at=at(10.5), delivered_at=at(12.5), attempts=1),
    dict(state="delivered", wamid="wamid.4", sent_at=at(20), delivered_at=at(24), attempts=2,
         error_code=130429, error_title="Rate limit hit"),
    dict(state="read", wamid="wamid.5", sent_at=at(30), delivered_at=at(31), read_at=at(90), attempts=1,
         replied_at=at(95.5), reply="Interested"),
    dict(state="read", wamid="wamid.6", sent_at=at(40), delivered_at=at(48), read_at=at(160), attempts=1,
         pair_hits=1, error_code=131056, error_title="Pair rate limit hit",
         replied_at=at(170), reply='Yes, "both" please\nthanks'),
    dict(state="failed", wamid="wamid.7", sent_at=at(50), failed_at=at(55), attempts=1,
         error_code=131026, error_title="Message undeliverable", error_details="Receiver is incapable"),
    dict(state="failed", wamid="wamid.8", sent_at=at(60), failed_at=at(66), attempts=1,
         error_code=131026, error_title="Message undeliverable"),
    dict(state="failed", failed_at=at(70), attempts=1, error_code=131008, error_title="Required parameter is missing"),
    dict(state="skipped", error_title="opted out"),
    dict(state="cancelled"),
]


def build_spring(db: Database, name: str = "spring") -> list[int]:
    """The campaign `spring`: message i goes to PHONES[i] in state SPRING[i]; row numbers run
    backwards, so file order is the reverse of id order. Returns the ids by i."""
    seed(db, name, PHONES)
    with db.session() as session:
        by_phone = dict(session.execute(
            select(Contact.phone, Message.id).join(Message, Message.contact_id == Contact.id)
        ).all())
        ids = [by_phone[p] for p in PHONES]
        for i, (message_id, values) in enumerate(zip(ids, SPRING)):
            # The recipient's CSV row as imported: a `phone` column (taken), then two more.
            params = {"phone": f"0151 23{i:06d}", "name": f"Name {i}", "order": f"A-{i:03d}"}
            session.execute(update(Message).where(Message.id == message_id)
                            .values(row_number=100 - i, params=params, **values))
    return ids


def report_text(db: Database, **options: Any) -> str:
    stream = io.StringIO()
    export.write_report(db, "spring", stream, **options)
    return stream.getvalue()


def report_rows(db: Database, **options: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(report_text(db, **options))))


# -- pure helpers ---------------------------------------------------------------------------------


def test_csv_columns_that_collide_with_ours_get_a_prefix() -> None:
    assert export.output_names(["name", "phone", "status", "csv_phone2"]) == ["name", "csv_phone", "csv_status", "csv_phone2"]
    assert export.output_names(["csv_phone", "phone"]) == ["csv_phone", "csv_csv_phone"]


def test_statuses_are_parsed_from_a_comma_list_or_a_sequence() -> None:
    assert export.parse_statuses("delivered, read,FAILED") == ["delivered", "read", "failed"]
    assert export.parse_statuses(["delivered,read", "read"]) == ["delivered", "read"]
    assert export.parse_statuses(None) is None


def test_an_unknown_status_name_is_named_in_the_error() -> None:
    with pytest.raises(CampaignError, match="unknown status 'deliverd'"):
        export.parse_statuses("read,deliverd")


def test_bin_width_keeps_the_timeline_under_the_bin_limit() -> None:
    assert chart.bin_width(90) == 1
    assert chart.bin_width(12_500) == 120  # a million at 80 MPS: 105 bins of 2 minutes
    assert chart.bin_width(40 * 86400) == 43200
    assert chart.bin_width(100 * 86400) == 86400
    assert 200 * 86400 / chart.bin_width(200 * 86400) <= chart.MAX_BINS


def test_file_names_choose_the_format_and_the_default_path_follows_it() -> None:
    assert [export.format_for_path(p) for p in ("r.xlsx", "r.PARQUET", "r.jsonl", "r.json", "r.txt")] == [
        "xlsx", "parquet", "json", "json", "csv"]
    assert export.default_path("spring sale/2026") == Path("spring_sale_2026-report.csv")
    assert export.default_path("spring", "json") == Path("spring-report.jsonl")


def test_csv_quotes_only_the_values_that_need_it() -> None:
    lines = export.csv_lines([pa.array(["plain", 'say "hi"', "a,b", "two\nlines", None, ""]),
                              pa.array([1, None, 3, 4, 5, 6], pa.int64())])
    text = bytes(lines).decode() + "\n"
    assert text.startswith("plain,1\n")
    assert list(csv.reader(io.StringIO(text))) == [
        ["plain", "1"], ['say "hi"', ""], ["a,b", "3"], ["two\nlines", "4"], ["", "5"], ["", "6"]]


@pytest.mark.parametrize("control", [False, True])
def test_json_lines_are_what_json_reads_back(control: bool) -> None:
    texts = ['say "hi"', "back\\slash", "Zoë 😀 \u2028", None, "", "tab\there" if control else "no tab"]
    codes = [1, None, 3, 4, 5, 6]
    lines = bytes(export.json_lines([pa.array(texts), pa.array(codes, pa.int64())], ["a\"b", "n"])).decode()
    assert [json.loads(line) for line in lines.split("\n")] == [{'a"b': t, "n": c} for t, c in zip(texts, codes)]


# -- the report ------------------------------------------------------------------------------------


def test_header_is_the_interface_columns_then_the_original_csv_columns(db: Database) -> None:
    build_spring(db)
    header = report_text(db).splitlines()[0]
    assert header == ("phone,wa_id,status,wamid,error_code,error_title,sent_at,delivered_at,read_at,failed_at,"
                      "replied_at,reply,user_id,csv_phone,name,order")
    assert header.split(",")[: len(export.COLUMNS)] == export.COLUMNS


def test_rows_follow_the_file_order_and_carry_their_csv_values(db: Database) -> None:
    build_spring(db)
    rows = report_rows(db)
    assert [r["phone"] for r in rows] == PHONES[::-1]  # row numbers run backwards
    first = rows[-1]
    assert (first["csv_phone"], first["name"], first["order"]) == ("0151 23000000", "Name 0", "A-000")


def test_every_state_is_reported_with_its_error_and_iso_utc_times(db: Database) -> None:
    build_spring(db)
    rows = {r["phone"]: r for r in report_rows(db)}
    assert [rows[p]["status"] for p in PHONES] == [s["state"] for s in SPRING]

    failed = rows[PHONES[7]]
    assert (failed["error_code"], failed["error_title"]) == ("131026", "Message undeliverable")
    assert (failed["wamid"], failed["sent_at"], failed["failed_at"]) == ("wamid.7", "2026-11-21T10:00:50Z", "2026-11-21T10:00:55Z")
    delivered = rows[PHONES[3]]
    # Times are UTC to the second (10.5 s after T0 is 10:00:10); unknown ones are empty.
    assert (delivered["sent_at"], delivered["delivered_at"], delivered["read_at"]) == (
        "2026-11-21T10:00:10Z", "2026-11-21T10:00:12Z", "")
    assert delivered["wa_id"] == "4915123000003"
    read = rows[PHONES[5]]
    assert (read["delivered_at"], read["read_at"]) == ("2026-11-21T10:00:31Z", "2026-11-21T10:01:30Z")
    assert (read["replied_at"], read["reply"]) == ("2026-11-21T10:01:35Z", "Interested")
    assert rows[PHONES[6]]["reply"] == 'Yes, "both" please\nthanks'
    assert (delivered["replied_at"], delivered["reply"]) == ("", "")
    # An error left from a retry that later succeeded is not shown as the message's error...
    assert (rows[PHONES[4]]["error_code"], rows[PHONES[4]]["error_title"]) == ("", "")
    # ...but a message still waiting for its retry shows why, and a skipped one its reason.
    assert (rows[PHONES[0]]["error_code"], rows[PHONES[0]]["error_title"]) == ("131000", "Something went wrong")
    assert rows[PHONES[10]]["error_title"] == "opted out"
    assert rows[PHONES[9]]["wamid"] == ""
    for row in rows.values():
        assert row["phone"].startswith("+")
        for column in export.TIME_COLUMNS:
            assert row[column] == "" or ISO_UTC.match(row[column]), row[column]


def test_status_filter_keeps_only_those_states(db: Database) -> None:
    build_spring(db)
    rows = report_rows(db, statuses="delivered,read")
    assert sorted(r["status"] for r in rows) == ["delivered", "delivered", "read", "read"]
    result = export.write_report(db, "spring", io.BytesIO(), statuses=["failed"])
    assert result.rows == 3


def test_a_filter_that_matches_nothing_writes_the_header_alone(db: Database) -> None:
    seed(db, "spring", PHONES[:2])
    assert report_text(db, statuses=["read"]) == ",".join(export.COLUMNS + ["name", "order"]) + "\n"


def test_an_unknown_status_is_refused_before_anything_is_written(db: Database, tmp_path: Path) -> None:
    seed(db, "spring", PHONES[:2])
    with pytest.raises(CampaignError, match="unknown status 'bounced'"):
        export.write_report(db, "spring", tmp_path / "r.csv", statuses="delivered,bounced")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".csv", ".partial"))]


def test_a_missing_campaign_is_an_error(db: Database, tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match="no campaign named 'autumn'"):
        export.write_report(db, "autumn", tmp_path / "r.csv")
    assert not (tmp_path / "r.csv").exists()
    with pytest.raises(CampaignError, match="no campaign named 'autumn'"):
        summary.summary(db, "autumn")


def test_an_unknown_format_is_an_error(db: Database) -> None:
    seed(db, "spring", PHONES[:1])
    with pytest.raises(CampaignError, match="--format 'html'"):
        export.write_report(db, "spring", io.BytesIO(), fmt="html")


def _normalized(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A report read back by pandas, with each format's spelling of 'unknown' and of times made one."""
    rows = []
    for record in frame.to_dict(orient="records"):
        row: dict[str, Any] = {}
        for key, value in record.items():
            if value is None or value is pd.NaT or (isinstance(value, float) and np.isnan(value)) or value == "":
                row[key] = None
            elif isinstance(value, pd.Timestamp):
                assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
                row[key] = value.strftime("%Y-%m-%dT%H:%M:%SZ")
            elif key == "error_code":
                row[key] = int(value)
            else:
                row[key] = str(value)
        rows.append(row)
    return rows


def _read_back(fmt: str, path: Path) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    if fmt == "xlsx":
        return pd.read_excel(path, sheet_name="report", dtype={"phone": str, "wa_id": str})
    if fmt == "parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True, dtype=False)


@pytest.mark.parametrize("fmt", ["csv", "xlsx", "parquet", "json"])
def test_every_format_round_trips_the_same_rows(db: Database, tmp_path: Path, fmt: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    build_spring(db)
    monkeypatch.setattr(export, "CHUNK_ROWS", 5)  # several chunks, so their seams are tested too
    path = tmp_path / f"spring{export.SUFFIXES[fmt]}"
    result = export.write_report(db, "spring", path, fmt=fmt)
    assert (result.rows, result.path, result.format) == (12, path, fmt)

    frame = _read_back(fmt, path)
    assert list(frame.columns) == export.COLUMNS + ["csv_phone", "name", "order"]
    expected = _normalized(pd.read_csv(io.StringIO(report_text(db)), dtype=str, keep_default_na=False))
    assert _normalized(frame) == expected
    assert [r["phone"] for r in expected] == PHONES[::-1]
    assert expected[-1]["error_code"] == 131000


def test_parquet_has_a_typed_schema(db: Database, tmp_path: Path) -> None:
    build_spring(db)
    export.write_report(db, "spring", tmp_path / "r.parquet", fmt="parquet")
    schema = pq.read_schema(tmp_path / "r.parquet")
    assert schema.field("error_code").type == pa.int64()
    assert schema.field("sent_at").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("replied_at").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("reply").type == pa.string()
    assert schema.field("phone").type == pa.string() and schema.field("order").type == pa.string()


def test_json_is_one_object_per_line_with_nulls_for_unknown(db: Database) -> None:
    build_spring(db)
    lines = report_text(db, fmt="json").splitlines()
    assert len(lines) == 12
    failed = next(json.loads(line) for line in lines if '"wamid.7"' in line)
    assert list(failed) == export.COLUMNS + ["csv_phone", "name", "order"]
    assert failed["error_code"] == 131026 and failed["read_at"] is None


def test_a_report_goes_to_a_binary_or_a_text_stream(db: Database) -> None:
    build_spring(db)
    binary = io.BytesIO()
    result = export.write_report(db, "spring", binary)
    assert result.path is None and result.rows == 12
    assert binary.getvalue().decode() == report_text(db)
    parquet = io.BytesIO()
    export.write_report(db, "spring", parquet, fmt="parquet")
    assert pq.ParquetFile(pa.BufferReader(parquet.getvalue())).read().num_rows == 12
    with pytest.raises(CampaignError, match="binary"):
        export.write_report(db, "spring", io.StringIO(), fmt="xlsx")


def test_a_failed_report_leaves_no_file(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_spring(db)
    target = tmp_path / "r.csv"
    target.write_text("the previous report\n")

    def broken(chunks: Any, names: Any, sink: Any) -> None:
        sink.write(b"half a report")
        raise RuntimeError("disk gone")

    monkeypatch.setitem(export._WRITERS, "csv", broken)
    with pytest.raises(RuntimeError):
        export.write_report(db, "spring", target)
    assert target.read_text() == "the previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_xlsx_is_refused_above_excels_row_limit(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_spring(db)
    monkeypatch.setattr(export, "EXCEL_MAX_ROWS", 12)  # 12 rows + the header do not fit
    with pytest.raises(CampaignError, match=r"campaign 'spring': 12 rows do not fit in Excel's 12-row sheet") as error:
        export.write_report(db, "spring", tmp_path / "r.xlsx", fmt="xlsx")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "r.xlsx").exists()
    assert export.write_report(db, "spring", tmp_path / "r.xlsx", fmt="xlsx", statuses="read").rows == 2


def _xlsx_cells(source: Path | bytes) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(the header, each row's cells by column, keyed by phone) of the xlsx report's one sheet."""
    from openpyxl import load_workbook

    book = load_workbook(io.BytesIO(source) if isinstance(source, bytes) else source)
    assert book.sheetnames == ["report"]
    header, *rows = list(book["report"].iter_rows())
    names = [cell.value for cell in header]
    return names, {row[0].value: dict(zip(names, row)) for row in rows}


def test_xlsx_cells_are_text_except_the_error_code(db: Database, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ids = build_spring(db)
    with db.session() as session:
        session.execute(update(Message).where(Message.id == ids[7])
                        .values(params={"phone": "0151 23000007", "name": "=HYPERLINK(\"http://x\")", "order": "007"},
                                reply="+49 call me"))
    monkeypatch.setattr(export, "XLSX_SLICE_ROWS", 5)  # several slices, so their seams are tested too
    export.write_report(db, "spring", tmp_path / "r.xlsx", fmt="xlsx")

    names, rows = _xlsx_cells(tmp_path / "r.xlsx")
    assert names == export.COLUMNS + ["csv_phone", "name", "order"]
    assert list(rows) == PHONES[::-1]
    failed = rows[PHONES[7]]
    assert (failed["phone"].value, failed["phone"].data_type) == ("+4915123000007", "s")
    assert (failed["name"].value, failed["name"].data_type) == ('=HYPERLINK("http://x")', "s")  # text, not a formula
    assert (failed["reply"].value, failed["reply"].data_type) == ("+49 call me", "s")  # no CSV-style quote needed
    assert (failed["order"].value, failed["order"].data_type) == ("007", "s")  # the leading zeros survive
    assert (failed["error_code"].value, failed["error_code"].data_type) == (131026, "n")
    assert (failed["sent_at"].value, failed["sent_at"].data_type) == ("2026-11-21T10:00:50Z", "s")  # ISO text, as in CSV
    assert (failed["failed_at"].value, failed["read_at"].value, failed["wa_id"].value) == ("2026-11-21T10:00:55Z", None, None)
    read = rows[PHONES[5]]
    assert [read[c].value for c in export.TIME_COLUMNS] == [
        "2026-11-21T10:00:30Z", "2026-11-21T10:00:31Z", "2026-11-21T10:01:30Z", None, "2026-11-21T10:01:35Z"]
    assert rows[PHONES[0]]["error_code"].value == 131000


def test_xlsx_drops_what_xml_cannot_hold_and_keeps_what_it_can(db: Database, tmp_path: Path) -> None:
    build_spring(db)
    with db.session() as session:
        session.execute(update(Message).values(params={"name": " <a & b> ", "note": "bell\x07", "lines": "one\r\ntwo"}))
    export.write_report(db, "spring", tmp_path / "r.xlsx", fmt="xlsx")
    _, rows = _xlsx_cells(tmp_path / "r.xlsx")
    row = rows[PHONES[0]]
    assert (row["name"].value, row["note"].value, row["lines"].value) == (" <a & b> ", "bell", "one\r\ntwo")


def test_xlsx_rows_are_inline_text_cells_and_numbers() -> None:
    xml = bytes(export.xlsx_rows([pa.array(["+49", None, " a&<b>", "_x0041_", ""]), pa.array([1, None, 3, None, 5])],
                                 ["A", "B"], 2)).decode()
    assert xml == (
        '<row r="2"><c r="A2" t="inlineStr"><is><t>+49</t></is></c><c r="B2"><v>1</v></c></row>'
        '<row r="3"></row>'
        '<row r="4"><c r="A4" t="inlineStr"><is><t xml:space="preserve"> a&amp;&lt;b&gt;</t></is></c><c r="B4"><v>3</v></c></row>'
        # Excel would read `_x0041_` as "A": its own escape keeps the text as written.
        '<row r="5"><c r="A5" t="inlineStr"><is><t>_x005F_x0041_</t></is></c></row>'
        '<row r="6"><c r="B6"><v>5</v></c></row>'
    )
    assert [export._column_letter(i) for i in (0, 25, 26, 701, 702)] == ["A", "Z", "AA", "ZZ", "AAA"]


def test_xlsx_cuts_a_value_at_excels_cell_limit() -> None:
    xml = bytes(export.xlsx_rows([pa.array(["é" * (export.EXCEL_MAX_CHARS + 10)])], ["A"], 1)).decode()
    assert xml.count("é") == export.EXCEL_MAX_CHARS


class _Pipe(io.RawIOBase):
    """A binary stream that only writes (`-o -` to a pipe)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.data += data
        return len(data)


def test_xlsx_goes_to_a_stream_that_cannot_seek(db: Database, tmp_path: Path) -> None:
    build_spring(db)
    pipe = _Pipe()
    assert export.write_report(db, "spring", pipe, fmt="xlsx").rows == 12
    export.write_report(db, "spring", tmp_path / "r.xlsx", fmt="xlsx")
    from_stream, from_file = _xlsx_cells(bytes(pipe.data)), _xlsx_cells(tmp_path / "r.xlsx")
    assert [[c.value for c in row.values()] for row in from_stream[1].values()] == [
        [c.value for c in row.values()] for row in from_file[1].values()]


def test_an_xlsx_filter_that_matches_nothing_writes_the_header_alone(db: Database, tmp_path: Path) -> None:
    seed(db, "spring", PHONES[:2])
    export.write_report(db, "spring", tmp_path / "r.xlsx", fmt="xlsx", statuses=["read"])
    names, rows = _xlsx_cells(tmp_path / "r.xlsx")
    assert (names, rows) == (export.COLUMNS + ["name", "order"], {})


def test_rows_from_no_import_contribute_every_key_in_order_of_appearance(db: Database) -> None:
    ids = build_spring(db)
    with db.session() as session:
        session.execute(update(Message).where(Message.id == ids[3]).values(params={"name": "X", "extra": "e"}))
        session.execute(update(Message).where(Message.id == ids[5]).values(params={"tier": 7, "name": "Y"}))
    rows = {r["phone"]: r for r in report_rows(db)}
    header = list(next(iter(rows.values())))
    # The first rows' keys in their order; keys other rows add come after (in scan order).
    assert header[:16] == export.COLUMNS + ["csv_phone", "name", "order"]
    assert sorted(header[16:]) == ["extra", "tier"]
    assert (rows[PHONES[3]]["extra"], rows[PHONES[3]]["order"]) == ("e", "")
    assert rows[PHONES[5]]["tier"] == "7"  # a script's number comes out as text


def test_imported_columns_come_in_file_order_across_imports(db: Database, tmp_path: Path) -> None:
    with db.session() as session:
        campaigns.create(session, campaigns.CampaignSpec("spring", "order_update", "en_US", ["name"]))
    first = tmp_path / "a.csv"
    first.write_text("name,phone,city\nAna,+4915123000001,Köln\nBo,+4915123000002,\"Bonn, Rhein\"\n", encoding="utf-8")
    second = tmp_path / "b.csv"
    second.write_text("phone,name,tier\n+4915123000003,Cy,gold\n", encoding="utf-8")
    for path in (first, second):
        import_file(db, "spring", path, ImportOptions(rejects_path=tmp_path / "rejects.csv"))
    rows = report_rows(db)
    assert list(rows[0]) == export.COLUMNS + ["name", "csv_phone", "city", "tier"]
    by_phone = {r["phone"]: r for r in rows}
    assert by_phone["+4915123000002"]["city"] == "Bonn, Rhein"
    assert by_phone["+4915123000003"]["tier"] == "gold" and by_phone["+4915123000003"]["city"] == ""
    assert {r["status"] for r in rows} == {"queued"}


# -- summary -----------------------------------------------------------------------------------------


def test_summary_figures_of_a_known_campaign(db: Database) -> None:
    build_spring(db)
    s = summary.summary(db, "spring", now=NOW)
    assert s.counts == {"queued": 1, "sending": 1, "sent": 1, "delivered": 2, "read": 2, "failed": 3,
                        "skipped": 1, "cancelled": 1}
    assert s.total == 12
    # Accepted by Meta: sent 1 + delivered 2 + read 2 + the 2 failures Meta reported (not 131008,
    # which the API refused before accepting anything).
    assert (s.handed_to_meta, s.reached, s.failed_before_meta) == (7, 4, 1)
    assert s.delivery_rate == pytest.approx(4 / 7)
    assert s.read_rate == 0.5
    # Both read messages were answered; spring binds no button and has no template definition.
    assert (s.replied, s.reply_rate, s.replies_by_button) == (2, 0.5, {})
    # Sent → delivered: 2, 4, 1 and 8 s; numpy's percentiles of [1, 2, 4, 8] are 3.0 and 6.8.
    assert s.time_to_deliver == summary.Durations(count=4, median=3.0, p90=6.8)
    assert s.time_to_read == summary.Durations(count=2, median=90.0, p90=114.0)
    assert [(g.code, g.count, g.title) for g in s.failures] == [
        (131026, 2, "Message undeliverable"), (131008, 1, "Required parameter is missing")]
    assert s.failures[0].meaning.startswith("undeliverable") and "unreachable" in s.failures[0].advice
    assert s.skipped == [summary.ReasonCount("opted out", 1)]
    assert (s.waiting_for_status, s.in_doubt, s.in_flight, s.retry_pending) == (1, 1, 0, 1)
    assert (s.retried, s.pair_limited, s.throttled) == (1, 1, 1)
    assert [(g.code, g.count) for g in s.retry_errors] == [(130429, 1), (131000, 1), (131056, 1)]
    assert (s.first_sent_at, s.last_sent_at) == (at(0), at(60))


def test_summary_before_anything_was_sent_has_no_rates(db: Database) -> None:
    seed(db, "spring", PHONES[:3])
    s = summary.summary(db, "spring", now=NOW)
    assert (s.total, s.handed_to_meta, s.delivery_rate, s.read_rate) == (3, 0, None, None)
    assert s.time_to_deliver == summary.Durations(0, None, None)
    assert "Delivery rate -" in render.format_summary(s)


def test_a_sent_message_counts_as_waiting_only_after_the_waiting_time(db: Database) -> None:
    build_spring(db)
    assert summary.summary(db, "spring", now=at(30)).waiting_for_status == 0
    assert summary.summary(db, "spring", now=at(30), waiting_after=timedelta(seconds=10)).waiting_for_status == 1


def test_summary_text_and_json(db: Database) -> None:
    build_spring(db)
    s = summary.summary(db, "spring", now=NOW)
    text = render.format_summary(s)
    assert "Delivery rate 57.1% (4 delivered or read of 7 accepted by Meta)" in text
    assert "Read rate     50.0%" in text
    assert "Replies       50.0% (2 of 4 reached)\n" in text
    assert "median 3.0 s, 90% within 6.8 s" in text
    assert "131026" in text and "undeliverable" in text
    data = json.loads(json.dumps(s.as_dict()))
    assert data["counts"]["failed"] == 3 and data["first_sent_at"] == "2026-11-21T10:00:00Z"
    assert data["time_to_read"] == {"count": 2, "median": 90.0, "p90": 114.0}
    assert data["failures"][0]["code"] == 131026 and data["waiting_after"] == 3600.0
    assert (data["replied"], data["reply_rate"], data["replies_by_button"]) == (2, 0.5, {})


# -- chart ---------------------------------------------------------------------------------------------


def test_timeline_counts_each_event_once(db: Database) -> None:
    build_spring(db)
    line = chart.timeline(db, "spring")
    assert (line.start, line.width) == (at(0), 2)  # 160 s of events in bins of 2 s
    assert {event: sum(counts) for event, counts in line.events.items()} == {
        "sent": 7, "delivered": 4, "read": 2, "failed": 3}
    assert line.events["read"][80] == 1  # read at 160 s


def test_chart_is_a_png_with_two_panels_worth_of_pixels(db: Database, tmp_path: Path) -> None:
    from matplotlib.image import imread

    build_spring(db)
    path = chart.write_chart(db, "spring", tmp_path / "chart.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    height, width, _ = imread(path).shape
    assert (width, height) == (1300, 550)


def test_chart_of_a_campaign_not_sent_yet(db: Database, tmp_path: Path) -> None:
    seed(db, "spring", PHONES[:3])
    path = chart.write_chart(db, "spring", tmp_path / "chart.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
