"""Recipient files: structural checks before anything is read for real.

Everything here happens before the database is touched, so a file with a structural error
imports nothing. The whole file's encoding is checked up front: pandas reading a Latin-1
file in chunks as UTF-8 fails only at the first bad chunk, 300,000 rows in
(library-notes.md), which is too late for "all or nothing".
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from pathlib import Path

from campaign.exceptions import CampaignError

PHONE_COLUMNS = ("phone", "phone_number", "msisdn", "mobile", "wa_id", "to")
USER_ID_COLUMN = "user_id"
"""The header of a column of business-scoped user ids (identity.py), found case-insensitively."""
DELIMITERS = (",", ";", "\t")
_BLOCK = 1 << 20
_BOM = codecs.BOM_UTF8
NEWLINE = b"\n"


@dataclass(frozen=True)
class CsvLayout:
    path: Path
    delimiter: str
    columns: list[str]
    phone_column: str | None
    """None for a file of BSUID recipients only."""
    size: int
    user_id_column: str | None = None


def inspect(path: str | Path, phone_column: str | None = None, user_id_column: str | None = None) -> CsvLayout:
    """Check that `path` is a non-empty UTF-8 delimited text file with a phone column, a
    BSUID column (`user_id`), or both."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise CampaignError(f"{name}: no such file")
    if path.is_dir():
        raise CampaignError(f"{name}: is a folder, not a CSV file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(64 * 1024)
        if not head.removeprefix(_BOM).strip():
            raise CampaignError(f"{name}: the file is empty")
        check_encoding(f, name)
    text = head.removeprefix(_BOM).decode("utf-8", errors="ignore")
    header_line = text.splitlines()[0] if text.strip() else ""
    delimiter = max(DELIMITERS, key=header_line.count) if any(d in header_line for d in DELIMITERS) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)  # "\r" alone ends a line too
    columns = next(reader, [])
    if not any(c.strip() for c in columns):
        raise CampaignError(f"{name}: line 1 should be a header naming the columns, and it is blank")
    if not any(any(cell.strip() for cell in row) for row in reader) and len(head) == size:
        raise CampaignError(f"{name}: has a header but no rows")
    user_ids = _user_id_column(columns, user_id_column, name)
    try:
        phones: str | None = _phone_column(columns, phone_column, name)
    except NoPhoneColumn:
        if user_ids is None:
            raise
        phones = None
    return CsvLayout(path, delimiter, columns, phones, size, user_ids)


def check_short_rows(layout: CsvLayout) -> None:
    """Raise naming the first row with fewer fields than the header (a ragged row).

    pandas pads such a row with empty strings without a word, so a shifted or truncated line
    would import with its values in the wrong columns. pyarrow's parser counts every row's
    fields, quotes (and quoted newlines) understood, at a few hundred MB/s and in bounded
    memory; only a row it flags is looked at in Python, and the file is read once more, with
    the csv module, only to name the flagged row's line. A blank line is not a row (nor one
    of nothing but delimiters and spaces: it carries nothing to lose). Rows longer than the
    header are left to the reader (importer._Reader), which names them itself."""
    expected = len(layout.columns)
    if expected < 2:
        return
    import pyarrow as pa  # only imports read files this way: a worker never loads it
    import pyarrow.csv as pacsv

    blank = layout.delimiter + " \t\r\n"
    short: list[str] = []

    def on_invalid(row: object) -> str:
        text = getattr(row, "text", "") or ""
        if getattr(row, "actual_columns", expected) >= expected or not text.strip(blank):
            return "skip"
        short.append(text)
        return "error"

    names = [f"c{i}" for i in range(expected)]
    # One thread is as fast for a stream, and leaves no thread pool behind for the import's
    # forked workers to inherit.
    try:
        reader = pacsv.open_csv(
            layout.path,
            read_options=pacsv.ReadOptions(column_names=names, block_size=_BLOCK, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=layout.delimiter, newlines_in_values=True,
                                              invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(include_columns=names[:1], column_types={names[0]: pa.string()}),
        )
        for _ in reader:
            pass
    except (pa.ArrowInvalid, OSError):
        if not short:
            return  # something else pyarrow could not read: the reader says what, if it matters
    if short:
        line, fields = _short_row_line(layout, expected)
        where = f"line {line}" if line else f"the row {short[0][:60]!r}"
        have = f"{fields} field{'s' if fields != 1 else ''}" if line else "fewer fields"
        raise CampaignError(f"{layout.path}: {where} has {have}, the header has {expected}")


def _short_row_line(layout: CsvLayout, expected: int) -> tuple[int, int]:
    """The line where the first row with fewer fields than the header (and something in
    them) starts, and its field count; (0, 0) if the csv module sees none."""
    with layout.path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=layout.delimiter)
        try:
            next(reader, None)
            start = reader.line_num + 1
            for row in reader:
                if len(row) < expected and any(cell.strip() for cell in row):
                    return start, len(row)
                start = reader.line_num + 1
        except csv.Error:  # a field over the csv module's limit: the row is named by its text
            pass
    return 0, 0


def check_encoding(f: io.BufferedReader, name: str) -> None:
    """Raise naming the line of the first byte that is not UTF-8, or the first NUL byte."""
    f.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    while block := f.read(_BLOCK):
        nul = block.find(b"\x00")
        if nul >= 0:
            raise CampaignError(
                f"{name}: line {line + block.count(NEWLINE, 0, nul)} holds a NUL byte: "
                "this is a binary file (a spreadsheet or an archive?), not a CSV text file"
            )
        try:
            decoder.decode(block)
        except UnicodeDecodeError as exc:
            bad_line = line + block.count(NEWLINE, 0, max(exc.start, 0))
            raise CampaignError(
                f"{name}: line {bad_line} is not valid UTF-8 (byte 0x{block[max(exc.start, 0)]:02x}); "
                "save the file as UTF-8 (in Excel: CSV UTF-8)"
            ) from None
        line += block.count(NEWLINE)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise CampaignError(f"{name}: line {line} ends in the middle of a UTF-8 character; save the file as UTF-8") from None


class NoPhoneColumn(CampaignError):
    """The header names no phone column: for a list of numbers, the file may be one per line."""


def _phone_column(columns: list[str], wanted: str | None, name: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise CampaignError(f"{name}: --phone-column {wanted!r} is not in the header ({_listing(columns)})")
        return wanted
    by_lower = {c.strip().lower(): c for c in reversed(columns)}
    for candidate in PHONE_COLUMNS:
        if candidate in by_lower:
            return by_lower[candidate]
    raise NoPhoneColumn(
        f"{name}: no phone column in the header ({_listing(columns)}); "
        f"name it one of {', '.join(PHONE_COLUMNS)} or pass --phone-column "
        f"(or give a {USER_ID_COLUMN} column of business-scoped user ids)"
    )


def _user_id_column(columns: list[str], wanted: str | None, name: str) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise CampaignError(f"{name}: --user-id-column {wanted!r} is not in the header ({_listing(columns)})")
        return wanted
    return next((c for c in columns if c.strip().lower() == USER_ID_COLUMN), None)


def _listing(columns: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(c) for c in columns[:limit])
    return shown + (", ..." if len(columns) > limit else "")
