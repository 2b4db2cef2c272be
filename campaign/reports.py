"""Reports out: one row per recipient (CSV, Excel, parquet, JSON Lines), a summary, a chart.

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

Formats:
- `csv`: UTF-8 without BOM, `,`, `\\n`, RFC 4180 quoting only where a value needs it;
  empty where unknown. (Excel turns `+49...` into a number when it opens a CSV: use xlsx.)
- `json`: JSON Lines, one object per recipient with the keys in column order, `null` where
  unknown, `error_code` a number. Lines stream through `-o - | jq`, and
  `pandas.read_json(path, lines=True)` reads it back.
- `parquet`: one row group per chunk and a fixed schema: strings, `error_code` int64, the
  four times `timestamp[ms, tz=UTC]` (whole seconds; Parquet has no seconds unit), the
  original CSV columns strings.
- `xlsx`: one sheet `report`, every value a text cell except `error_code` (a number);
  refused above Excel's 1,048,576 rows (header included).

Files are written to a temporary name beside the target and renamed at the end, so a
failed report never leaves half a file.
"""

from __future__ import annotations

import codecs
import io
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    extract,
    func,
    or_,
    select,
    type_coerce,
)

from campaign import campaigns, errors
from campaign.db import Database
from campaign.exceptions import CampaignError
from campaign.clock import utcnow
from campaign.models import Campaign, Contact, Import, Message
from campaign.states import MessageState

COLUMNS = ["phone", "wa_id", "status", "wamid", "error_code", "error_title", "sent_at", "delivered_at", "read_at", "failed_at"]
TIME_COLUMNS = ("sent_at", "delivered_at", "read_at", "failed_at")
FORMATS = ("csv", "xlsx", "parquet", "json")
SUFFIXES = {"csv": ".csv", "xlsx": ".xlsx", "parquet": ".parquet", "json": ".jsonl"}
CSV_PREFIX = "csv_"
CHUNK_ROWS = 25_000
EXCEL_MAX_ROWS = 1_048_576
"""Excel's rows per sheet, the header included."""
STATES = tuple(s.value for s in MessageState)
WAITING_AFTER = timedelta(hours=1)
"""A `sent` message with no delivered/read/failed status after this long counts as waiting.
Meta usually reports delivery within seconds; a phone that stays offline can take up to the
30-day message TTL (whatsapp-cloud-api.md), so waiting is a flag, not a failure."""

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
    stem = re.sub(r"[^\w.-]+", "_", campaign_name).strip("._") or "campaign"
    return Path(f"{stem}-report{SUFFIXES.get(fmt, '.csv')}")


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


def _seconds_between(postgres: bool, start: Any, end: Any) -> ColumnElement[Any]:
    if postgres:
        return func.greatest(extract("epoch", end) - extract("epoch", start), 0.0)
    # julianday() reads SQLAlchemy's stored text; a double keeps about 20 us here.
    return func.max((func.julianday(end) - func.julianday(start)) * 86400.0, 0.0)


def _epoch(postgres: bool, column: Any) -> ColumnElement[Any]:
    if postgres:
        return extract("epoch", column)
    return (func.julianday(column) - 2440587.5) * 86400.0


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

    def durations(self, campaign_id: int, start: Any, end: Any) -> Durations:
        """Median and 90th percentile of the seconds from `start` to `end`.

        The database computes each duration; only that one column comes back, streamed into
        a numpy array (8 bytes a message). Measured on SQLite with 900,000 deliveries: 1.4 s,
        where a window-function rank in SQL took 3 s and `ORDER BY ... OFFSET` 1.8 s per
        percentile."""
        seconds = _seconds_between(self.postgres, start, end)
        query = (select(seconds).where(_m.campaign_id == campaign_id, start.is_not(None), end.is_not(None))
                 .execution_options(stream_results=True, yield_per=CHUNK_ROWS))
        parts = [np.array(part, dtype=np.float64) for part in self.conn.execute(query).scalars().partitions()]
        if not parts:
            return Durations(0, None, None)
        values = np.concatenate(parts)
        median, p90 = np.percentile(values, [50, 90])
        return Durations(len(values), round(float(median), 3), round(float(p90), 3))


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
    arrays.extend(iso_times(pa.array(columns[i], type=pa.string())) for i in range(6, 10))
    arrays.extend(_params_arrays(columns[10], csv_columns))
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
    enough of a file for pyarrow's ParquetWriter and for zipfile (openpyxl)."""

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
    if not path.parent.is_dir():
        raise CampaignError(f"{path}: folder {str(path.parent)!r} does not exist")
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        handle = temp.open("wb")
    except OSError as exc:
        raise CampaignError(f"{path}: cannot write the report ({exc.strerror})") from None
    try:
        with handle:
            yield handle, path
        os.replace(temp, path)
    except OSError as exc:
        raise CampaignError(f"{path}: cannot write the report ({exc.strerror})") from None
    finally:
        temp.unlink(missing_ok=True)


# -- writers (each takes the chunks and a binary file object) --------------------------------------


def _write_csv(chunks: Iterator[pa.Table], names: list[str], sink: IO[bytes]) -> None:
    sink.write(csv_lines([pa.array([n]) for n in names]))
    for table in chunks:
        if table.num_rows:
            sink.write(b"\n")
            sink.write(csv_lines([column.combine_chunks() for column in table.columns]))
    sink.write(b"\n")


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


_EXCEL_ILLEGAL = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"


def _write_xlsx(chunks: Iterator[pa.Table], names: list[str], sink: IO[bytes]) -> None:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    book = Workbook(write_only=True)
    sheet = book.create_sheet("report")
    sheet.append(names)
    for table in chunks:
        columns = []
        for column in table.columns:
            column = column.combine_chunks()
            if pa.types.is_string(column.type):
                # Excel refuses control characters; a value starting with `=` would become a formula.
                column = pc.replace_substring_regex(column, _EXCEL_ILLEGAL, "")
                formula_like = pc.starts_with(column, "=")
                if pc.any(formula_like).as_py():
                    values = column.to_pylist()
                    for i in np.flatnonzero(formula_like.fill_null(False).to_numpy(zero_copy_only=False)):
                        cell = WriteOnlyCell(sheet, value=values[i])
                        cell.data_type = "s"
                        values[i] = cell
                    columns.append(values)
                    continue
            columns.append(column.to_pylist())
        for row in zip(*columns):
            sheet.append(row)
    book.save(sink)


_WRITERS = {"csv": _write_csv, "json": _write_json, "parquet": _write_parquet, "xlsx": _write_xlsx}


# -- summary -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorGroup:
    """Messages sharing an error code, with Meta's meaning and what to do (errors.py)."""

    code: int | None
    count: int
    title: str | None
    """One of the titles recorded for the code (the smallest, for stable output)."""
    meaning: str
    advice: str


@dataclass(frozen=True)
class ReasonCount:
    reason: str
    count: int


@dataclass(frozen=True)
class Durations:
    """Seconds from `sent_at` to a later status, over the messages that have both times."""

    count: int
    median: float | None
    p90: float | None
    """90th percentile. Both exact, interpolated linearly between ranks (numpy's default,
    like PostgreSQL's percentile_cont), rounded to the millisecond; None without messages."""


@dataclass(frozen=True)
class Summary:
    """A campaign's outcome in figures; every definition is in its field's docstring."""

    campaign: str
    state: str
    generated_at: datetime
    total: int
    counts: dict[str, int]
    """Messages per state, every state present."""
    handed_to_meta: int
    """Accepted by Meta: `sent` + `delivered` + `read` + `failed` after acceptance (a
    wamid or `sent_at`, i.e. Meta's status webhook reported the failure)."""
    reached: int
    """`delivered` + `read`."""
    delivery_rate: float | None
    """reached / handed_to_meta; None when nothing was handed over. Failures the API refused
    at once (never accepted, `failed_before_meta`) are not in it: they are not deliveries
    that failed, they are requests that failed."""
    read_rate: float | None
    """read / reached."""
    failures: list[ErrorGroup]
    """Failed messages by error code, the largest group first."""
    failed_before_meta: int
    """`failed` without ever being accepted: the API refused the request (an invalid
    parameter, a retry given up)."""
    skipped: list[ReasonCount]
    """Skipped messages by the rule that forbade sending."""
    time_to_deliver: Durations
    time_to_read: Durations
    """From `sent_at` to `read_at`."""
    waiting_for_status: int
    """`sent` longer than `waiting_after` ago and no delivered, read or failed status yet."""
    waiting_after: timedelta
    in_doubt: int
    """`sending`, the request may have left (its `sending_at` is set) and no worker holds it any
    more: it waits for a status webhook or for the grace period (outbox.py)."""
    in_flight: int
    """`sending` and not in doubt: claimed by a worker, or its request out under a live lease."""
    retry_pending: int
    """`queued` with a retry due later."""
    retried: int
    """Messages whose request left more than once (`attempts` > 1): retries after a
    throttling, transient error or in-doubt recovery."""
    pair_limited: int
    """Messages refused at least once for the pair rate (131056; `pair_hits` > 0)."""
    throttled: int
    """Messages whose last recorded error is 130429 (throughput). Approximate: a message keeps
    only its last error, so an earlier 130429 overwritten by another error is not counted."""
    retry_errors: list[ErrorGroup]
    """The last error kept by messages that did not fail (sent after a retry, or waiting for
    one): what the engine recovered from. Approximate in the same way."""
    first_sent_at: datetime | None
    last_sent_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (`campaign report --json`): times ISO 8601 UTC, durations in seconds."""
        data = asdict(self)
        for key in ("generated_at", "first_sent_at", "last_sent_at"):
            data[key] = _iso(data[key])
        data["waiting_after"] = self.waiting_after.total_seconds()
        return data


def summary(db: Database, name: str, *, now: datetime | None = None,
            waiting_after: timedelta = WAITING_AFTER) -> Summary:
    """The figures of campaign `name`, aggregated by the database (nothing per row in Python)."""
    now = now or utcnow()
    with db.read_session() as session:
        campaign = campaigns.get(session, name)
        conn = session.connection()
        counts = campaigns.counts(session, [campaign.id])[campaign.id].by_state
        source = _Source(conn)
        mine = _m.campaign_id == campaign.id
        lease_gone = or_(_m.lease_expires_at.is_(None), _m.lease_expires_at < now)
        sending_out = and_(_m.state == MessageState.SENDING.value, _m.sending_at.is_not(None))
        failed = _m.state == MessageState.FAILED.value
        accepted = or_(_m.wamid.is_not(None), _m.sent_at.is_not(None))
        figures = conn.execute(select(
            _count(and_(failed, accepted)),
            _count(and_(failed, ~accepted)),
            _count(and_(_m.state == MessageState.SENT.value, _m.sent_at < now - waiting_after)),
            _count(and_(sending_out, lease_gone)),
            _count(and_(_m.state == MessageState.SENDING.value, ~and_(sending_out, lease_gone))),
            _count(and_(_m.state == MessageState.QUEUED.value, _m.next_attempt_at > now)),
            _count(_m.attempts > 1),
            _count(_m.pair_hits > 0),
            _count(_m.error_code == 130429),
            func.min(_m.sent_at),
            func.max(_m.sent_at),
        ).where(mine)).one()
        # One scan for all of these: on SQLite each pass over a million wide rows costs ~0.7 s.
        (failed_accepted, failed_before, waiting, in_doubt, in_flight, retry_pending,
         retried, pair_limited, throttled, first_sent, last_sent) = figures
        failures = _error_groups(conn, and_(mine, failed))
        retry_errors = _error_groups(conn, and_(mine, ~failed, _m.error_code.is_not(None),
                                                _m.state != MessageState.SKIPPED.value))
        skipped = [
            ReasonCount(reason or "no reason recorded", n)
            for reason, n in conn.execute(
                select(_m.error_title, func.count()).where(mine, _m.state == MessageState.SKIPPED.value)
                .group_by(_m.error_title).order_by(func.count().desc(), _m.error_title)
            )
        ]
        time_to_deliver = source.durations(campaign.id, _m.sent_at, _m.delivered_at)
        time_to_read = source.durations(campaign.id, _m.sent_at, _m.read_at)
        state = campaign.state

    reached = counts["delivered"] + counts["read"]
    handed = counts["sent"] + reached + failed_accepted
    return Summary(
        campaign=name, state=state, generated_at=now, total=sum(counts.values()), counts=dict(counts),
        handed_to_meta=handed, reached=reached,
        delivery_rate=reached / handed if handed else None,
        read_rate=counts["read"] / reached if reached else None,
        failures=failures, failed_before_meta=failed_before, skipped=skipped,
        time_to_deliver=time_to_deliver, time_to_read=time_to_read,
        waiting_for_status=waiting, waiting_after=waiting_after, in_doubt=in_doubt, in_flight=in_flight,
        retry_pending=retry_pending, retried=retried, pair_limited=pair_limited, throttled=throttled,
        retry_errors=retry_errors, first_sent_at=first_sent, last_sent_at=last_sent,
    )


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _error_groups(conn: Connection, where: ColumnElement[bool]) -> list[ErrorGroup]:
    query = (
        select(_m.error_code, func.count(), func.min(_m.error_title))
        .where(where).group_by(_m.error_code).order_by(func.count().desc(), _m.error_code)
    )
    groups = []
    for code, n, title in conn.execute(query):
        if code is None:
            groups.append(ErrorGroup(None, n, title, "no error code recorded", "see the error title"))
        else:
            rule = errors.rule_for(int(code))
            groups.append(ErrorGroup(int(code), n, title, rule.meaning, rule.advice))
    return groups


def format_summary(s: Summary) -> str:
    """The summary as plain text for a terminal."""
    lines = [f"Campaign {s.campaign!r} ({s.state}): {s.total:,} recipients, as of {_iso(s.generated_at)}"]
    lines.append("  " + ", ".join(f"{state} {s.counts.get(state, 0):,}" for state in STATES))
    if s.first_sent_at is not None:
        lines.append(f"  sending from {_iso(s.first_sent_at)} to {_iso(s.last_sent_at)}")
    lines.append(
        f"Delivery rate {_percent(s.delivery_rate)} ({s.reached:,} delivered or read of {s.handed_to_meta:,} accepted by Meta)"
    )
    lines.append(f"Read rate     {_percent(s.read_rate)} ({s.counts.get('read', 0):,} read of {s.reached:,} delivered)")
    for label, d in (("Time to deliver", s.time_to_deliver), ("Time to read   ", s.time_to_read)):
        if d.count:
            lines.append(f"{label} median {_human(d.median)}, 90% within {_human(d.p90)} ({d.count:,} messages)")
        else:
            lines.append(f"{label} -")
    failed = s.counts.get("failed", 0)
    if failed:
        extra = f", {s.failed_before_meta:,} refused before Meta accepted them" if s.failed_before_meta else ""
        lines.append(f"Failures: {failed:,}{extra}")
        lines.extend(_group_lines(s.failures))
    if s.skipped:
        lines.append(f"Skipped: {s.counts.get('skipped', 0):,}")
        lines.extend(f"  {r.count:>9,}  {r.reason}" for r in s.skipped)
    waiting = []
    if s.waiting_for_status:
        waiting.append(f"{s.waiting_for_status:,} sent over {_human(s.waiting_after.total_seconds())} ago without a delivery status")
    if s.in_doubt:
        waiting.append(f"{s.in_doubt:,} in doubt: the request may have left; waiting for a webhook or the grace period")
    if s.in_flight:
        waiting.append(f"{s.in_flight:,} being sent")
    if s.retry_pending:
        waiting.append(f"{s.retry_pending:,} queued for a retry")
    if waiting:
        lines.append("Waiting:")
        lines.extend(f"  {w}" for w in waiting)
    if s.retried or s.pair_limited or s.throttled or s.retry_errors:
        lines.append(f"Retries: {s.retried:,} needed more than one attempt, {s.pair_limited:,} held back by the pair rate "
                     f"(131056), {s.throttled:,} last throttled (130429)")
        if s.retry_errors:
            lines.append("  the last error of messages that did not fail (earlier ones are not kept):")
            lines.extend(_group_lines(s.retry_errors))
    return "\n".join(lines)


def _group_lines(groups: list[ErrorGroup]) -> list[str]:
    lines = []
    for g in groups:
        code = str(g.code) if g.code is not None else "-"
        title = f" [{g.title}]" if g.title else ""
        lines.append(f"  {g.count:>9,}  {code:>6}  {g.meaning}{title}")
        lines.append(f"  {'':>9}  {'':>6}  -> {g.advice}")
    return lines


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _human(seconds: float | None) -> str:
    """`2.5 s`, `4 min 10 s`, `1 h`, `2 d 3 h`."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    for big, big_unit, small, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "min"), (60, "min", 1, "s")):
        if seconds >= big:
            whole, rest = int(seconds // big), int(seconds % big // small)
            return f"{whole} {big_unit} {rest} {small_unit}" if rest else f"{whole} {big_unit}"
    return f"{seconds:.1f} s"


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- chart ---------------------------------------------------------------------------------------

BIN_SECONDS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_BINS = 120


def bin_width(span_seconds: float, max_bins: int = MAX_BINS) -> int:
    """The smallest round bin width (s) that covers `span_seconds` in at most `max_bins` bins."""
    for width in BIN_SECONDS:
        if span_seconds / width <= max_bins:
            return width
    return 86400 * math.ceil(span_seconds / 86400 / max_bins)


@dataclass(frozen=True)
class Timeline:
    """Counts per time bin of each event, aggregated by the database."""

    start: datetime | None
    width: int
    """Bin width in seconds."""
    bins: int
    events: dict[str, list[int]] = field(default_factory=dict)
    """`sent`, `delivered`, `read`, `failed` → count per bin."""


def timeline(db: Database, name: str) -> Timeline:
    """Sends, deliveries, reads and failures per time bin (adaptive width)."""
    with db.read_session() as session:
        campaign = campaigns.get(session, name)
        conn = session.connection()
        postgres = conn.dialect.name == "postgresql"
        mine = _m.campaign_id == campaign.id
        times = {"sent": _m.sent_at, "delivered": _m.delivered_at, "read": _m.read_at, "failed": _m.failed_at}
        bounds = conn.execute(select(func.min(_m.sent_at), *(func.max(c) for c in times.values())).where(mine)).one()
        start = bounds[0]
        ends = [t for t in bounds[1:] if t is not None]
        if start is None or not ends:
            return Timeline(None, 1, 0)
        span = max(1.0, (max(ends) - start).total_seconds())
        width = bin_width(span)
        bins = int(span // width) + 1
        origin = start.timestamp()
        buckets = []
        for event, column in times.items():
            offset = (_epoch(postgres, column) - origin) / width
            buckets.append((func.floor(offset) if postgres else cast(offset, Integer)).label(f"b_{event}"))
        # One pass: the joint histogram of the four bins (a few thousand groups: a message's
        # events fall in nearby bins), summed per event here.
        query = (select(*buckets, func.count()).where(mine, or_(*(c.is_not(None) for c in times.values())))
                 .group_by(*buckets))
        events = {event: [0] * bins for event in times}
        for *found, n in conn.execute(query):
            for event, b in zip(times, found):
                if b is not None:
                    events[event][min(max(int(b), 0), bins - 1)] += n
    return Timeline(start, width, bins, events)


def write_chart(db: Database, name: str, path: str | os.PathLike[str], *, figures: Summary | None = None) -> Path:
    """A PNG: the delivery funnel and the events over time, from aggregates only.

    `figures`: the campaign's summary when the caller has it already (it costs seconds on
    a million messages). Drawn with matplotlib's Agg canvas and no pyplot: headless, and it
    leaves the process-wide backend of a notebook or a script importing the library alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    target = Path(path)
    s = figures if figures is not None else summary(db, name)
    line = timeline(db, name)
    figure = Figure(figsize=(13, 5.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, width_ratios=[1, 1.5])
    figure.suptitle(f"Campaign {name!r} ({s.state}): {s.total:,} recipients, "
                    f"delivery {_percent(s.delivery_rate)}, read {_percent(s.read_rate)}", fontsize=13)
    _funnel(left, s)
    _over_time(right, line)
    if not target.parent.is_dir():
        raise CampaignError(f"{target}: folder {str(target.parent)!r} does not exist")
    temp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        figure.savefig(temp, format="png")
        os.replace(temp, target)
    except OSError as exc:
        raise CampaignError(f"{target}: cannot write the chart ({exc.strerror})") from None
    finally:
        temp.unlink(missing_ok=True)
    return target


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _position: f"{value:,.0f}")


def _funnel(ax: Any, s: Summary) -> None:
    not_sent = s.counts.get("skipped", 0) + s.counts.get("cancelled", 0)
    pending = s.counts.get("queued", 0) + s.counts.get("sending", 0)
    bars = [("recipients", s.total, "#607d8b"), ("sent to Meta", s.handed_to_meta, "#42a5f5"),
            ("delivered", s.reached, "#26a69a"), ("read", s.counts.get("read", 0), "#2e7d32"),
            ("failed", s.counts.get("failed", 0), "#e53935"), ("skipped or cancelled", not_sent, "#9e9e9e"),
            ("queued or sending", pending, "#ffb300")]
    labels = [b[0] for b in bars][::-1]
    values = [b[1] for b in bars][::-1]
    ax.barh(labels, values, color=[b[2] for b in bars][::-1])
    top = max(values) or 1
    for y, value in enumerate(values):
        share = f" ({value / s.total:.1%})" if s.total else ""
        ax.text(value + top * 0.01, y, f"{value:,}{share}", va="center", fontsize=9)
    ax.set_xlim(0, top * 1.35)
    ax.set_title("Delivery funnel")
    ax.set_xlabel("messages")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    ax.xaxis.set_major_formatter(_thousands())
    ax.grid(axis="x", alpha=0.3)


def _over_time(ax: Any, line: Timeline) -> None:
    ax.set_title("Over time (cumulative)")
    if line.start is None:
        ax.text(0.5, 0.5, "nothing sent yet", ha="center", va="center", transform=ax.transAxes, fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    # Each bin's cumulative count at its end, from 0 at the first send: a ramp within a bin.
    edges = [line.start + timedelta(seconds=line.width * i) for i in range(line.bins + 1)]
    colours = {"sent": "#42a5f5", "delivered": "#26a69a", "read": "#2e7d32", "failed": "#e53935"}
    for event, counts in line.events.items():
        if sum(counts):
            ax.plot(edges, [0, *np.cumsum(counts).tolist()], label=event, color=colours[event], linewidth=2)
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.yaxis.set_major_formatter(_thousands())
    ax.set_xlabel(f"time (UTC), in bins of {_width_label(line.width)}")
    ax.set_ylabel("messages")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)


def _width_label(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
