"""The per-recipient report: one row per recipient as CSV, Excel, parquet or JSON Lines.

The report streams. A 1,000,000-recipient campaign never sits in memory whole (DESIGN.md:
under 30 s and 500 MB; measured 15 s and 260 MB, benchmarks/report_million.py): rows come
in batches of `CHUNK_ROWS` in file order, each turned into a pyarrow table with vectorized
work only (times formatted by slicing the stored text, the recipients' CSV rows parsed by
pyarrow's JSON reader) and written before the next is read. PostgreSQL sorts the rows and
streams them through a server-side cursor. SQLite would sort whole rows in memory (no index
on `row_number`, and `temp_store=MEMORY`), so there only the ids are sorted (8 bytes each)
and each batch is fetched by its ids.

Columns: `COLUMNS`, then the recipient's original CSV columns in the file's order (a later
import's new columns after the first import's). A CSV column whose name is taken (most
files have a `phone` column) is prefixed with `csv_` until it is unique: `phone` →
`csv_phone`, the number exactly as the file had it.

Values:
- `phone` is E.164 with `+`; `wa_id` is the id Meta returned for the message, else the
  one a contacts check found.
- `error_code`/`error_title` show why a message failed or was skipped, or the last error of
  a message still waiting for a retry (`queued`/`sending`/`cancelled`). They are empty for
  `sent`, `delivered` and `read`: an error kept from a retry that later succeeded (130429,
  131056, ...) is history, counted in the summary, not a failure.
- times are ISO 8601 UTC to the second (`2026-11-21T10:15:30Z`), empty where unknown.
- `user_id`: the recipient's business-scoped user id (BSUID) where Meta has named it.
- `replied_at`/`reply`: the recipient's first answer to the message and when it came
  (inbound.py attributes answers): a button's payload (its label for an engine default
  payload) or the first 200 characters of a text.

Formats:
- `csv`: UTF-8 without BOM, `,`, `\\n`, RFC 4180 quoting only where a value needs it;
  empty where unknown. (Excel turns `+49...` into a number when it opens a CSV: use xlsx.)
  `reply` is the recipient's own text, so a spreadsheet must not run it: one starting with
  `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'` (OWASP, "CSV Injection").
- `json`: JSON Lines, one object per recipient with the keys in column order, `null` where
  unknown, `error_code` a number. Lines stream through `-o - | jq`, and
  `pandas.read_json(path, lines=True)` reads it back.
- `parquet`: one row group per chunk and a fixed schema: strings, `error_code` int64, the
  five times `timestamp[ms, tz=UTC]` (whole seconds; Parquet has no seconds unit), the
  original CSV columns strings.
- `xlsx`: one sheet `report`, every value a text cell except `error_code` (a number), so
  `+49...`, leading zeros and a reply starting with `=` stay text and nothing runs; times
  are the same ISO text as in the CSV; characters XML cannot hold are dropped and a value
  is cut at Excel's 32,767 characters a cell. Refused above Excel's 1,048,576 rows (header
  included). Written by pyarrow compute like the CSV (`xlsx_rows`): a million rows in about
  20 s, where openpyxl took 90 s and XlsxWriter 65 s.

Files are written to a temporary name beside the target and renamed at the end
(`files.atomic_path`), so a failed report never leaves half a file. The summary's figures are
in `summary`, the chart in `chart`.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
from sqlalchemy import ColumnElement, Connection, String, Text, bindparam, case, func, select, type_coerce

from campaign import files
from campaign.db import Database
from campaign.exceptions import CampaignError
from campaign.models import Campaign, Contact, Import, Message
from campaign.states import MessageState

COLUMNS = ["phone", "wa_id", "status", "wamid", "error_code", "error_title", "sent_at", "delivered_at", "read_at", "failed_at",
           "replied_at", "reply", "user_id"]
TIME_COLUMNS = ("sent_at", "delivered_at", "read_at", "failed_at", "replied_at")
FORMATS = ("csv", "xlsx", "parquet", "json")
SUFFIXES = {"csv": ".csv", "xlsx": ".xlsx", "parquet": ".parquet", "json": ".jsonl"}
CSV_PREFIX = "csv_"
CHUNK_ROWS = 25_000
EXCEL_MAX_ROWS = 1_048_576
"""Excel's rows per sheet, the header included."""
EXCEL_MAX_CHARS = 32_767
"""Excel's characters per cell."""
STATES = tuple(s.value for s in MessageState)

_HANDED_OVER = (MessageState.SENT.value, MessageState.DELIVERED.value, MessageState.READ.value)
_m = Message.__table__.c
_c = Contact.__table__.c


@dataclass(frozen=True)
class ReportResult:
    rows: int
    path: Path | None
    """The file written, or None for a stream."""
    format: str
    columns: list[str]


# -- options -------------------------------------------------------------------------------------


def parse_statuses(statuses: str | Sequence[str] | None) -> list[str] | None:
    """`["delivered", "read"]` from `"delivered,read"` or a list (items may hold commas too);
    None for no filter. An unknown name is a CampaignError naming it."""
    if statuses is None:
        return None
    items = [statuses] if isinstance(statuses, str) else list(statuses)
    wanted: list[str] = []
    for item in items:
        for name in item.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in STATES:
                raise CampaignError(f"--status: unknown status {name!r} (one of {', '.join(STATES)})")
            if name not in wanted:
                wanted.append(name)
    if not wanted:
        raise CampaignError("--status names no status")
    return wanted


def format_for_path(path: str | os.PathLike[str]) -> str:
    """The format a file name asks for (`.xlsx`, `.parquet`, `.json`/`.jsonl`), else csv."""
    suffix = Path(path).suffix.lower()
    return {".xlsx": "xlsx", ".parquet": "parquet", ".json": "json", ".jsonl": "json", ".ndjson": "json"}.get(suffix, "csv")


def default_path(campaign_name: str, fmt: str = "csv") -> Path:
    """`NAME-report.csv` (`.xlsx`, `.parquet`, `.jsonl` for the other formats)."""
    return files.campaign_file(campaign_name, "report", SUFFIXES.get(fmt, ".csv"))


def output_names(csv_columns: Sequence[str]) -> list[str]:
    """The report's names for the recipient's CSV columns: a taken name gets `csv_` in front."""
    taken = set(COLUMNS)
    names = []
    for column in csv_columns:
        name = column
        while name in taken:
            name = CSV_PREFIX + name
        taken.add(name)
        names.append(name)
    return names


# -- the report ----------------------------------------------------------------------------------


def write_report(
    db: Database,
    name: str,
    path_or_stream: str | os.PathLike[str] | IO[Any],
    *,
    statuses: str | Sequence[str] | None = None,
    fmt: str = "csv",
) -> ReportResult:
    """One row per recipient of campaign `name`, in file order (row number, then id).

    `path_or_stream` is a file name (written atomically) or an open file object, binary or
    text (`-o -`: pass `sys.stdout.buffer` or `sys.stdout`). Raises CampaignError for an
    unknown campaign, status or format, and for an xlsx report over Excel's row limit.
    """
    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise CampaignError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    wanted = parse_statuses(statuses)
    with _snapshot(db) as conn:
        campaign_id = _campaign_id(conn, name)
        source = _Source(conn)
        csv_columns = _csv_columns(conn, campaign_id)
        names = COLUMNS + output_names(csv_columns)
        rows, batches = source.rows(campaign_id, wanted)
        if fmt == "xlsx" and rows + 1 > EXCEL_MAX_ROWS:
            raise CampaignError(
                f"campaign {name!r}: {rows:,} rows do not fit in Excel's {EXCEL_MAX_ROWS:,}-row sheet; "
                "use --format csv or parquet, or --status to select fewer"
            )
        chunks = _tables(batches, csv_columns, text_schema(names))
        with _target(path_or_stream, binary=fmt in ("xlsx", "parquet")) as (sink, path):
            _WRITERS[fmt](chunks, names, sink)
    return ReportResult(rows=rows, path=path, format=fmt, columns=names)


def _tables(batches: Iterator[Sequence[Any]], csv_columns: list[str], schema: pa.Schema) -> Iterator[pa.Table]:
    """Each batch of rows as a table, one batch alive at a time."""
    for batch in batches:
        table = _table(batch, csv_columns, schema)
        del batch  # the rows' Python objects, before the writer makes its own
        yield table
        del table
        # pyarrow's allocator keeps freed pages; without this the peak grew by 80 MB over
        # a million rows.
        pa.default_memory_pool().release_unused()


@contextmanager
def _snapshot(db: Database) -> Iterator[Connection]:
    """One read-only transaction: the ids and the rows come from the same snapshot, and
    SQLite writers are not blocked (a deferred `BEGIN` under WAL)."""
    conn = db.engine.connect()
    try:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        else:
            conn = conn.execution_options(sqlite_deferred=True)
        with conn.begin():
            yield conn
    finally:
        conn.close()


def _campaign_id(conn: Connection, name: str) -> int:
    campaign_id = conn.scalar(select(Campaign.id).where(Campaign.name == name))
    if campaign_id is None:
        raise CampaignError(f"no campaign named {name!r} (`campaign status` lists them)")
    return campaign_id


def _csv_columns(conn: Connection, campaign_id: int) -> list[str]:
    """The recipients' CSV columns, in order, without reading every row.

    Every row of one import holds every column of its file (the importer writes whole rows),
    so one row per import tells its columns. Only messages that came from no import (a
    script's, or an import since deleted) are read in full.
    """
    keys: dict[str, None] = {}
    params = type_coerce(_m.params, Text())
    for import_id in conn.scalars(select(Import.id).where(Import.campaign_id == campaign_id).order_by(Import.id)):
        text = conn.scalar(select(params).where(_m.campaign_id == campaign_id, _m.import_id == import_id).limit(1))
        keys.update(dict.fromkeys(_keys_of(text)))
    orphans = conn.execute(
        select(params).where(_m.campaign_id == campaign_id, _m.import_id.is_(None))
        .execution_options(stream_results=True, yield_per=CHUNK_ROWS)
    )
    for batch in orphans.scalars().partitions():
        keys.update(dict.fromkeys(_keys_in(batch)))
    return list(keys)


def _keys_in(texts: Sequence[str | None]) -> list[str]:
    """Every key of the JSON objects, in order of first appearance: pyarrow's JSON reader
    infers exactly that union, at C speed; Python's json only when it cannot (mixed types)."""
    try:
        return pajson.read_json(io.BytesIO(_json_lines(texts)), read_options=_json_read_options(texts)).schema.names
    except pa.ArrowInvalid:
        keys: dict[str, None] = {}
        for text in texts:
            keys.update(dict.fromkeys(_keys_of(text)))
        return list(keys)


def _keys_of(text: str | None) -> list[str]:
    if not text:
        return []
    value = json.loads(text)
    return list(value) if isinstance(value, dict) else []


def _json_lines(texts: Sequence[str | None]) -> bytes:
    return "\n".join(t or "{}" for t in texts).encode()


def _json_read_options(texts: Sequence[str | None]) -> pajson.ReadOptions:
    # A block must hold the longest line (4 bytes a character at worst); one thread is as
    # fast for a chunk this size and keeps the allocator's per-thread caches small.
    longest = max((len(t) for t in texts if t), default=0)
    return pajson.ReadOptions(use_threads=False, block_size=max(1 << 20, 4 * longest + 16))




class _Source:
    """The report's queries on one connection, with the few expressions that differ by dialect."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"

    def _time_text(self, column: Any) -> ColumnElement[Any]:
        """`YYYY-MM-DD HH:MM:SS[...]` UTC as text: no datetime object per value.

        SQLite holds SQLAlchemy's naive-UTC text already; PostgreSQL formats its timestamptz."""
        if self.postgres:
            return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI:SS")
        return type_coerce(column, String())

    def rows(self, campaign_id: int, states: list[str] | None) -> tuple[int, Iterator[Sequence[Any]]]:
        """(how many rows, the rows in file order in batches of at most CHUNK_ROWS).

        PostgreSQL sorts the whole rows itself (spilling to disk past `work_mem`) and streams
        them through a server-side cursor. SQLite would sort them in memory (`temp_store=
        MEMORY`), so there only the ids are sorted, and each batch is fetched by its ids."""
        where = [_m.campaign_id == campaign_id]
        if states is not None:
            where.append(_m.state.in_(states))
        if self.postgres:
            count = self.conn.scalar(select(func.count()).select_from(Message.__table__).where(*where)) or 0
            query = self._report_select().where(*where).execution_options(stream_results=True, yield_per=CHUNK_ROWS)
            return count, self.conn.execute(query).partitions()
        ids = self._ordered_ids(where)
        return len(ids), self._by_ids(ids)

    def _report_select(self) -> Any:
        error_visible = _m.state.not_in(_HANDED_OVER)
        return (
            select(
                _c.phone,
                func.coalesce(_m.wa_id, _c.wa_id),
                _m.state,
                _m.wamid,
                case((error_visible, _m.error_code)),
                case((error_visible, _m.error_title)),
                *(self._time_text(_m[column]) for column in TIME_COLUMNS),
                _m.reply,
                _c.user_id,
                type_coerce(_m.params, Text()),
            )
            .select_from(Message.__table__.join(Contact.__table__, _c.id == _m.contact_id))
            .order_by(*_ORDER)
        )

    def _ordered_ids(self, where: list[ColumnElement[bool]]) -> np.ndarray:
        query = select(_m.id).where(*where).order_by(*_ORDER).execution_options(stream_results=True, yield_per=CHUNK_ROWS)
        parts = [np.array(part, dtype=np.int64) for part in self.conn.execute(query).scalars().partitions()]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def _by_ids(self, ids: np.ndarray) -> Iterator[Sequence[Any]]:
        query = self._report_select()
        for start in range(0, len(ids), CHUNK_ROWS):
            chunk = ids[start : start + CHUNK_ROWS]
            # One bound value per batch (SQLite allows 32,766 per statement).
            listed = func.json_each(bindparam("ids", "[" + ",".join(map(str, chunk.tolist())) + "]", type_=String))
            yield self.conn.execute(query.where(_m.id.in_(select(listed.table_valued("value").c.value)))).all()


_ORDER = (_m.row_number.is_(None), _m.row_number, _m.id)
"""File order: row number (rows without one last, on both dialects), then id."""


def text_schema(names: Sequence[str]) -> pa.Schema:
    """The chunks' schema: every column text except `error_code`; times as ISO text."""
    return pa.schema([pa.field(n, pa.int64() if n == "error_code" else pa.string()) for n in names])


def _table(rows: Sequence[Any], csv_columns: list[str], schema: pa.Schema) -> pa.Table:
    """A batch of `_report_select` rows in the report's text schema."""
    if not rows:
        return schema.empty_table()
    columns = list(zip(*rows))
    arrays: list[pa.Array] = [pa.array(columns[i], type=pa.string()) for i in range(4)]
    arrays.append(pa.array(columns[4], type=pa.int64()))
    arrays.append(pa.array(columns[5], type=pa.string()))
    times_end = 6 + len(TIME_COLUMNS)
    arrays.extend(iso_times(pa.array(columns[i], type=pa.string())) for i in range(6, times_end))
    arrays.append(pa.array(columns[times_end], type=pa.string()))  # reply
    arrays.append(pa.array(columns[times_end + 1], type=pa.string()))  # user_id
    arrays.extend(_params_arrays(columns[times_end + 2], csv_columns))
    return pa.Table.from_arrays(arrays, schema=schema)


def iso_times(stored: pa.Array) -> pa.Array:
    """`2026-11-21 10:15:30.123456` (stored UTC text) → `2026-11-21T10:15:30Z`, vectorized."""
    date = pc.utf8_slice_codeunits(stored, 0, 10)
    clock = pc.utf8_slice_codeunits(stored, 11, 19)
    return pc.binary_join_element_wise(date, "T", clock, "Z", "")


def _params_arrays(texts: Sequence[str | None], csv_columns: list[str]) -> list[pa.Array]:
    """The CSV columns of a chunk's rows, as text, parsed at C speed by pyarrow."""
    if not csv_columns:
        return []
    schema = pa.schema([pa.field(c, pa.string()) for c in csv_columns])
    try:
        table = pajson.read_json(
            io.BytesIO(_json_lines(texts)),
            read_options=_json_read_options(texts),
            parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
        if table.num_rows == len(texts):
            return [table.column(c).combine_chunks() for c in csv_columns]
    except pa.ArrowInvalid:
        pass  # a value that is not text (a script's number or list): the slow, tolerant way
    values: list[list[str | None]] = [[] for _ in csv_columns]
    for text in texts:
        row = json.loads(text) if text else {}
        row = row if isinstance(row, dict) else {}
        for column, out in zip(csv_columns, values):
            value = row.get(column)
            out.append(value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return [pa.array(v, type=pa.string()) for v in values]


# -- where it goes -------------------------------------------------------------------------------


class _BinarySink:
    """A write-only binary view of any open file object, text or binary, seekable or a pipe:
    enough of a file for pyarrow's ParquetWriter and for zipfile (XlsxWriter)."""

    def __init__(self, stream: IO[Any]) -> None:
        self.stream = stream
        self.position = 0
        self.closed = False
        self._text = isinstance(stream, io.TextIOBase) or (
            not isinstance(stream, (io.RawIOBase, io.BufferedIOBase)) and "b" not in getattr(stream, "mode", "b")
        )
        self._decoder = codecs.getincrementaldecoder("utf-8")() if self._text else None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        if self._decoder is not None:
            self.stream.write(self._decoder.decode(bytes(data)))
        else:
            self.stream.write(data)
        self.position += size
        return size

    def tell(self) -> int:
        return self.position

    def seek(self, *_: Any) -> int:
        raise io.UnsupportedOperation("seek")

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def flush(self) -> None:
        if hasattr(self.stream, "flush"):
            self.stream.flush()

    def close(self) -> None:
        """Leaves the stream open: it belongs to the caller (stdout)."""
        if not self.closed:
            self.flush()
            self.closed = True


@contextmanager
def _target(path_or_stream: str | os.PathLike[str] | IO[Any], *, binary: bool) -> Iterator[tuple[Any, Path | None]]:
    """(a binary file object to write, the final path or None); a file appears only when complete."""
    if hasattr(path_or_stream, "write"):
        stream: IO[Any] = path_or_stream  # type: ignore[assignment]
        if binary and isinstance(stream, io.TextIOBase):
            # A binary format into a text stream: its bytes go to the buffer underneath.
            buffer = getattr(stream, "buffer", None)
            if buffer is None:
                raise CampaignError("this format is binary: write it to a file or a binary stream")
            stream.flush()
            stream = buffer
        sink = _BinarySink(stream)
        yield sink, None
        sink.close()
        return
    path = Path(path_or_stream)  # type: ignore[arg-type]
    files.require_folder(path)
    try:
        with files.atomic_path(path) as temp, temp.open("wb") as handle:
            yield handle, path
    except OSError as exc:
        raise CampaignError(f"{path}: cannot write the report ({exc.strerror})") from None


# -- writers (each takes the chunks and a binary file object) --------------------------------------


def _write_csv(chunks: Iterator[pa.Table], names: list[str], sink: IO[bytes]) -> None:
    reply = names.index("reply")
    sink.write(csv_lines([pa.array([n]) for n in names]))
    for table in chunks:
        if table.num_rows:
            columns = [column.combine_chunks() for column in table.columns]
            columns[reply] = neutralize_formulas(columns[reply])
            sink.write(b"\n")
            sink.write(csv_lines(columns))
    sink.write(b"\n")


_FORMULA_START = r"^[=+\-@\t\r]"


def neutralize_formulas(column: pa.Array) -> pa.Array:
    """A leading `'` on each value a spreadsheet would take for a formula (OWASP's advice
    against CSV injection): the user's text shows as written and never runs."""
    formula_like = pc.match_substring_regex(column, _FORMULA_START)
    if not pc.any(formula_like).as_py():
        return column
    return pc.if_else(formula_like, pc.binary_join_element_wise("'", column, ""), column)


_NEEDS_QUOTES = r'[",\r\n]'


def csv_lines(columns: Sequence[pa.Array]) -> memoryview:
    """Rows as CSV text without the last line's newline, quoted only where needed
    (RFC 4180), built by pyarrow compute.

    pyarrow's own CSV writer quotes every string; Python's csv module quotes minimally but
    costs more than all the chunk's other work."""
    fields = []
    for column in columns:
        text = column.cast(pa.string()) if not pa.types.is_string(column.type) else column
        text = pc.fill_null(text, "")
        needs_quotes = pc.match_substring_regex(text, _NEEDS_QUOTES)
        if pc.any(needs_quotes).as_py():
            quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
            text = pc.if_else(needs_quotes, quoted, text)
        fields.append(text)
    lines = pc.binary_join_element_wise(*fields, ",")
    whole = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines), "\n")
    return memoryview(whole[0].as_buffer())


def _write_json(chunks: Iterator[pa.Table], names: list[str], sink: IO[bytes]) -> None:
    for table in chunks:
        if table.num_rows:
            sink.write(json_lines([column.combine_chunks() for column in table.columns], names))
            sink.write(b"\n")


def json_lines(columns: Sequence[pa.Array], names: Sequence[str]) -> memoryview:
    """One JSON object per row, keys in column order, without the last newline; built by
    pyarrow compute like `csv_lines` (json.dumps per row took twice the whole CSV report)."""
    parts: list[Any] = ["{"]
    for i, (column, name) in enumerate(zip(columns, names)):
        parts.append(("," if i else "") + json.dumps(name, ensure_ascii=False) + ":")
        parts.append(_json_values(column))
    parts.append("}")
    lines = pc.binary_join_element_wise(*parts, "")
    whole = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines), "\n")
    return memoryview(whole[0].as_buffer())


def _json_values(column: pa.Array) -> pa.Array:
    if pa.types.is_integer(column.type):
        return pc.fill_null(column.cast(pa.string()), "null")
    if pc.any(pc.match_substring_regex(column, r"[\x00-\x1f]")).as_py():
        # A control character (rare): Python's json escapes the column.
        inner = pa.array([None if v is None else json.dumps(v, ensure_ascii=False)[1:-1] for v in column.to_pylist()],
                         type=pa.string())
    else:
        # With ensure_ascii off, JSON escapes only the quote, the backslash and controls.
        inner = pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')
    return pc.fill_null(pc.binary_join_element_wise('"', inner, '"', ""), "null")


def _write_parquet(chunks: Iterator[pa.Table], names: list[str], sink: IO[bytes]) -> None:
    schema = parquet_schema(names)
    with pq.ParquetWriter(sink, schema) as writer:
        for table in chunks:
            writer.write_table(_typed_times(table, schema), row_group_size=max(1, table.num_rows))
        # An empty report still gets its schema (the writer writes the footer on close).


def parquet_schema(names: Sequence[str]) -> pa.Schema:
    """The parquet report's fixed schema (module docstring)."""
    def kind(name: str) -> pa.DataType:
        if name == "error_code":
            return pa.int64()
        if name in TIME_COLUMNS:
            return pa.timestamp("ms", tz="UTC")  # Parquet has no seconds unit
        return pa.string()
    return pa.schema([pa.field(n, kind(n)) for n in names])


def _typed_times(table: pa.Table, schema: pa.Schema) -> pa.Table:
    for column in TIME_COLUMNS:
        index = table.schema.get_field_index(column)
        parsed = pc.strptime(table.column(index), format="%Y-%m-%dT%H:%M:%SZ", unit="s")
        table = table.set_column(index, schema.field(column), parsed.cast(schema.field(column).type))
    return table


# -- xlsx: SpreadsheetML written by pyarrow compute, like the CSV ---------------------------------
#
# A general writer pays for every cell in Python: openpyxl's write-only mode took 91-95 s
# for a million rows, XlsxWriter's constant_memory mode 65 s (benchmarks/report_million.py,
# load 1.5-2). The report's sheet is simple (text cells, one number column, no styles), so
# each slice of rows is built as SpreadsheetML at C speed, as `csv_lines` builds CSV, into
# an anonymous scratch file that is zipped at the end (as both libraries do): memory stays
# one slice's. The parts around the sheet are XlsxWriter's, less its theme and document
# properties (both optional in ECMA-376); openpyxl, pandas and LibreOffice read the file back
# cell for cell as the CSV.

_EXCEL_ILLEGAL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x{FFFE}\x{FFFF}]"
"""What XML 1.0 (so Excel) cannot hold: removed."""
_EXCEL_ESCAPE = r"_(x[0-9A-Fa-f]{4}_)"
"""Excel reads `_x0041_` in a cell's text as the character it names (ECMA-376 §22.9.2.19):
such a literal gets its underscore escaped (`_x005F_x0041_`), as Excel itself writes it."""
_SPREADSHEETML = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_RELATIONSHIPS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_XLSX_PARTS = {
    "[Content_Types].xml": _XML + (
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        '<Override PartName="/xl/styles.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
        '</Types>'),
    "_rels/.rels": _XML + (
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
        'Target="xl/workbook.xml"/></Relationships>'),
    "xl/workbook.xml": _XML + (
        f'<workbook xmlns="{_SPREADSHEETML}" xmlns:r="{_RELATIONSHIPS}">'
        '<sheets><sheet name="report" sheetId="1" r:id="rId1"/></sheets></workbook>'),
    "xl/_rels/workbook.xml.rels": _XML + (
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{_RELATIONSHIPS}/worksheet" Target="worksheets/sheet1.xml"/>'
        f'<Relationship Id="rId2" Type="{_RELATIONSHIPS}/styles" Target="styles.xml"/></Relationships>'),
    "xl/styles.xml": _XML + (
        f'<styleSheet xmlns="{_SPREADSHEETML}">'
        '<fonts count="1"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts>'
        '<fills count="2"><fill><patternFill patternType="none"/></fill><fill><patternFill patternType="gray125"/></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
        '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
        '<cellXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/></cellXfs>'
        '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
        '</styleSheet>'),
}
_SHEET = "xl/worksheets/sheet1.xml"
XLSX_SLICE_ROWS = 5_000


def _write_xlsx(chunks: Iterator[pa.Table], names: list[str], sink: IO[bytes]) -> None:
    """One sheet `report`: every value a text cell (`+49...` and leading zeros kept, `=...`
    never a formula), `error_code` a number, an unknown value no cell at all."""
    letters = [_column_letter(i) for i in range(len(names))]
    with tempfile.TemporaryFile(prefix="campaign-xlsx-") as rows_file:
        rows_file.write(xlsx_rows([pa.array([n], pa.string()) for n in names], letters, 1))
        count = 1
        for table in chunks:
            # A slice's XML is about six times its text; slices keep that small beside the chunk.
            for start in range(0, table.num_rows, XLSX_SLICE_ROWS):
                part = table.slice(start, XLSX_SLICE_ROWS)
                rows_file.write(xlsx_rows([c.combine_chunks() for c in part.columns], letters, count + 1))
                count += part.num_rows
        head = (_XML + f'<worksheet xmlns="{_SPREADSHEETML}" xmlns:r="{_RELATIONSHIPS}">'
                f'<dimension ref="A1:{letters[-1]}{count}"/><sheetData>').encode()
        tail = b"</sheetData></worksheet>"
        size = rows_file.tell()
        rows_file.seek(0)
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as book:
            for name, text in _XLSX_PARTS.items():
                book.writestr(name, text)
            sheet = zipfile.ZipInfo(_SHEET, date_time=(1980, 1, 1, 0, 0, 0))
            sheet.compress_type = zipfile.ZIP_DEFLATED
            sheet.file_size = len(head) + size + len(tail)  # ZIP64 only when the sheet needs it
            with book.open(sheet, "w") as out:
                out.write(head)
                shutil.copyfileobj(rows_file, out, 1 << 20)
                out.write(tail)


def _column_letter(index: int) -> str:
    """0 → A, 25 → Z, 26 → AA."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def xlsx_rows(columns: Sequence[pa.Array], letters: Sequence[str], first_row: int) -> memoryview:
    """`<row>` elements of SpreadsheetML for rows numbered from `first_row`, built by pyarrow
    compute: a string is an inline text cell, an integer a number cell, a null no cell."""
    count = len(columns[0]) if columns else 0
    numbers = pa.array(np.arange(first_row, first_row + count, dtype=np.int64)).cast(pa.string())
    cells = []
    for column, letter in zip(columns, letters):
        if pa.types.is_integer(column.type):
            cell = pc.binary_join_element_wise(f'<c r="{letter}', numbers, '"><v>', column.cast(pa.string()), "</v></c>", "")
        else:
            text = _xml_text(column)
            padded = pc.match_substring_regex(text, r"^\s|\s$")
            opening = '" t="inlineStr"><is><t>'
            if pc.any(padded).as_py():  # Excel trims leading and trailing blanks otherwise
                opening = pc.if_else(padded, '" t="inlineStr"><is><t xml:space="preserve">', opening)
            cell = pc.binary_join_element_wise(f'<c r="{letter}', numbers, opening, text, "</t></is></c>", "")
            cell = pc.if_else(pc.equal(text, ""), None, cell)
        cells.append(pc.fill_null(cell, ""))
    rows = pc.binary_join_element_wise('<row r="', numbers, '">', *cells, "</row>", "")
    whole = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(rows)], pa.int32()), rows), "")
    return memoryview(whole[0].as_buffer())


def _xml_text(column: pa.Array) -> pa.Array:
    """Text as an XML element's content, in Excel's spelling."""
    text = pc.replace_substring_regex(column, _EXCEL_ILLEGAL, "")
    if len(text) and (pc.max(pc.utf8_length(text)).as_py() or 0) > EXCEL_MAX_CHARS:
        text = pc.utf8_slice_codeunits(text, 0, EXCEL_MAX_CHARS)  # what Excel and XlsxWriter do
    if pc.any(pc.match_substring(text, "_x")).as_py():
        text = pc.replace_substring_regex(text, _EXCEL_ESCAPE, r"_x005F_\1")
    for raw, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("\r", "&#13;")):
        text = pc.replace_substring(text, raw, escaped)
    return text


_WRITERS = {"csv": _write_csv, "json": _write_json, "parquet": _write_parquet, "xlsx": _write_xlsx}
