"""CSV in: a recipients file becomes `queued` messages in the outbox, all of them or none.

The file streams through pandas in chunks (every column as text, so `+`, leading zeros and
long digit strings survive). Numbers are normalized in worker processes when the file is
large, since phonenumbers (about 55,000 numbers/s per core) is most of the work; the main
process meanwhile classifies rows and writes them. One transaction holds the whole file:
a structural error found late (a ragged row at line 900,000) rolls back everything, and the
rejects file is moved into place only after the commit.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from itertools import islice
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Select, bindparam, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from campaign import binding, campaigns, contacts, csvfile, files, identity, phone, policy
from campaign.binding import SourceKind
from campaign.db import Database
from campaign.exceptions import CampaignError
from campaign.clock import utcnow
from campaign.models import Campaign, Contact, ContactAlias, Import, Message, Suppression, UTCDateTime
from campaign.payloads import targets_without_definition
from campaign.sql import batches
from campaign.states import CampaignState, MessageState
from campaign.templates import MEDIA_KINDS, Kind, Target

CHUNK_ROWS = 50_000
PARALLEL_FROM_BYTES = 4 << 20
"""Below this size a worker pool costs more to start than it saves."""
IMPORTABLE_STATES = (CampaignState.DRAFT, CampaignState.SCHEDULED, CampaignState.RUNNING, CampaignState.PAUSED)


class Reason(StrEnum):
    INVALID_NUMBER = "invalid_number"
    DUPLICATE = "duplicate"
    SUPPRESSED = "suppressed"
    NOT_ON_WHATSAPP = "not_on_whatsapp"
    BAD_PARAM = "bad_param"


@dataclass
class ImportResult:
    imported: int = 0
    rejected: int = 0
    invalid: int = 0
    duplicate: int = 0
    suppressed: int = 0
    not_on_whatsapp: int = 0
    bad_param: int = 0
    """Rows whose value for a bound target Meta would refuse (empty, bad whitespace, too long)."""
    us_numbers: int = 0
    """Accepted United States numbers (Meta does not deliver marketing templates there)."""
    rows: int = 0
    rejects_file: str | None = None
    warnings: list[str] = field(default_factory=list)

    def count(self, reason: Reason) -> None:
        self.rejected += 1
        attribute = "invalid" if reason is Reason.INVALID_NUMBER else reason.value
        setattr(self, attribute, getattr(self, attribute) + 1)

    def summary_line(self) -> str:
        line = (
            f"imported {self.imported}, rejected {self.rejected} (invalid {self.invalid}, "
            f"duplicate {self.duplicate}, suppressed {self.suppressed}, not_on_whatsapp {self.not_on_whatsapp}"
        )
        # bad_param is not one of INTERFACE.md's four: shown only when it happened, so the
        # figures in the brackets always add up to `rejected`.
        return line + (f", bad_param {self.bad_param})" if self.bad_param else ")")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


ProgressCallback = Callable[[str, int, int], None]
"""(phase, done, total): bytes of the file read, or numbers checked."""


@dataclass(frozen=True)
class ImportOptions:
    phone_column: str | None = None
    default_region: str | None = None
    check_contacts: bool = False
    rejects_path: str | Path | None = None
    user_id_column: str | None = None
    """A column of business-scoped user ids (default: a `user_id` header, if any)."""


def default_rejects_path(campaign_name: str) -> Path:
    """`NAME-rejects.csv` in the current folder."""
    return files.campaign_file(campaign_name, "rejects", ".csv")


def import_file(
    db: Database,
    campaign_name: str,
    path: str | Path,
    options: ImportOptions = ImportOptions(),
    *,
    contacts_endpoint: contacts.ContactsEndpoint | None = None,
    now: datetime | None = None,
    progress: ProgressCallback | None = None,
) -> ImportResult:
    """Import `path` into the campaign; raises `CampaignError` (importing nothing) on a structural error."""
    now = now or utcnow()
    region = _region(options.default_region)
    with db.read_session() as session:
        campaign = _importable(session, campaign_name)
    layout = csvfile.inspect(path, options.phone_column, options.user_id_column)
    checks = _bound_columns(campaign, layout)
    csvfile.check_short_rows(layout)
    reader = _Reader(layout, region, progress)

    unreachable: dict[str, str] = {}
    result = ImportResult()
    if options.check_contacts:
        # The file's numbers only while they are checked (not bound to a name: they would stay
        # alive through the whole import).
        check = contacts.check(
            db, {e164 for _, numbers in reader.chunks("normalizing") for e164 in numbers.e164 if e164}, now,
            contacts_endpoint, None if progress is None else lambda d, t: progress("checking", d, t)
        )
        unreachable = check.unreachable
        result.warnings.extend(check.warnings)

    rejects_path = Path(options.rejects_path) if options.rejects_path else default_rejects_path(campaign.name)
    try:
        # Leaving in reverse order: the session commits, the rejects file closes, and only then
        # does it take its name (a rolled-back import leaves none).
        with (
            files.atomic_path(rejects_path) as temp,
            closing(_RejectsWriter(rejects_path, temp, layout.columns)) as rejects,
            db.session() as session,
        ):
            campaign = _importable(session, campaign_name)
            record = Import(campaign_id=campaign.id, file=str(layout.path), started_at=now)
            session.add(record)
            session.flush()
            batch = _Batch(session, campaign, record.id, now)
            rows = _Classifier(
                existing=_campaign_identities(session, campaign.id, with_user_ids=layout.user_id_column is not None),
                suppressed=_suppressions(session, campaign.template_category),
                unreachable=unreachable,
                checks=checks,
                authentication=campaign.template_category == "authentication",
            )
            people = _People(session) if layout.user_id_column is not None else None
            for chunk, normalized in reader.chunks("importing"):
                user_ids = _user_ids(chunk, layout.user_id_column)
                known = people.lookup(normalized.e164, user_ids) if people is not None else None
                accepted = rows.classify(chunk, normalized, user_ids, known, result, rejects)
                batch.write(chunk, accepted)
            if result.rows == 0:
                raise CampaignError(f"{layout.path}: has a header but no rows")
            result.imported = batch.written
            if rejects.count:
                result.rejects_file = str(rejects_path)
            for name in ("rows", "imported", "rejected", "invalid", "duplicate", "suppressed",
                         "not_on_whatsapp", "bad_param", "us_numbers", "rejects_file"):
                setattr(record, name, getattr(result, name))
            record.finished_at = utcnow()
            if campaign.state != CampaignState.DRAFT:  # a draft's are placed at launch
                campaigns.place_recipients(session, campaign)
    except IntegrityError:
        raise CampaignError(
            f"campaign {campaign_name!r} changed while {layout.path} was imported (another import at the same time?); nothing was imported, run it again"
        ) from None
    result.warnings.extend(_us_warnings(campaign, result.us_numbers))
    return result


def _region(code: str | None) -> str | None:
    if code is None:
        return None
    if not phone.is_region(code):
        raise CampaignError(f"--default-region {code!r} is not a region code such as DE, GB or US")
    return code.upper()


def _importable(session: Session, name: str) -> Campaign:
    campaign = campaigns.get(session, name)
    if campaign.state not in IMPORTABLE_STATES:
        raise CampaignError(f"campaign {name!r} is {campaign.state}: it takes no more recipients")
    return campaign


def _bound_columns(campaign: Campaign, layout: csvfile.CsvLayout) -> list[tuple[Target, str]]:
    """Each target a column fills, with that column: what every row's value is checked
    against. A column the binding (or the free-form text) names must be in the header."""
    text_columns = campaigns.text_placeholders(campaign.text_body) if campaign.text_body else []
    bound = campaigns.binding_of(campaign)
    shorthand = {f"body.{n}": column for n, column in enumerate(campaign.param_columns, start=1)}
    named = [(s.value, "--param" if shorthand.get(k) == s.value else f"--bind {k}")
             for k, s in bound.items() if s.kind is SourceKind.COLUMN]
    for column, option in named + [(c, "--text") for c in text_columns]:
        if column not in layout.columns:
            raise CampaignError(
                f"{layout.path}: column {column!r} ({option} of campaign {campaign.name!r}) is not in the header"
            )
    info = campaigns.template_info(campaign)
    targets = info.targets if info is not None else targets_without_definition(bound, campaign.header_type)
    return [(t, bound[t.key].value) for t in targets if t.key in bound and bound[t.key].kind is SourceKind.COLUMN]


def _us_warnings(campaign: Campaign, us_numbers: int) -> list[str]:
    if not us_numbers:
        return []
    if campaign.template_category == "marketing":
        return [
            f"{us_numbers} recipients have United States (+1) numbers: Meta does not deliver marketing templates there, so they will fail"
        ]
    if campaign.template_category is None:
        return [
            f"{us_numbers} recipients have United States (+1) numbers: if {campaign.template_name!r} is a marketing template, Meta will not deliver it to them"
        ]
    return []


def _campaign_identities(session: Session, campaign_id: int, *, with_user_ids: bool) -> _Identities:
    """What the campaign's recipients are already known by: their numbers, and for a file with
    BSUIDs also their BSUIDs, old ids (aliases) and contact ids (`_People.person`).

    Streamed into int64 keys: a campaign of 10M recipients holds 120 MB here, not a gigabyte of strings."""
    existing = _Identities()
    query = select(Contact.phone).join(Message, Message.contact_id == Contact.id).where(Message.campaign_id == campaign_id)
    for phones in _streamed(session, query):
        existing.add(phones, 0)
    if with_user_ids:
        in_campaign = select(Message.contact_id).where(Message.campaign_id == campaign_id)
        for rows in _streamed(session, select(Contact.id, Contact.user_id).where(Contact.id.in_(in_campaign)), scalars=False):
            existing.add([i for contact_id, user_id in rows for i in (user_id, _People.person(contact_id))], 0)
        for aliases in _streamed(session, select(ContactAlias.identity).where(ContactAlias.contact_id.in_(in_campaign))):
            existing.add(aliases, 0)
    return existing


def _streamed(session: Session, query: Select[Any], *, scalars: bool = True) -> Iterator[list[Any]]:
    """The query's rows (or first column) in lists of CHUNK_ROWS, never all at once (a
    server-side cursor on PostgreSQL). Iterated: SQLAlchemy's `partitions()` took 3.3 s for a
    million rows where this takes 0.7."""
    result = session.connection().execute(query.execution_options(yield_per=CHUNK_ROWS))
    rows = iter(result.scalars() if scalars else result)
    while batch := list(islice(rows, CHUNK_ROWS)):
        yield batch


def _suppressions(session: Session, category: str | None) -> dict[str, str]:
    """The suppressed numbers and BSUIDs that stop this campaign's template
    (policy.suppression_applies), with why."""
    return {
        p or u: f"on the suppression list ({source}{': ' + reason if reason else ''})"
        for p, u, source, reason, scope in session.execute(
            select(Suppression.phone, Suppression.user_id, Suppression.source, Suppression.reason, Suppression.scope))
        if policy.suppression_applies(scope, category)
    }


def _user_ids(chunk: pd.DataFrame, column: str | None) -> list[str | None]:
    """Each row's BSUID, stripped; None where the file has no such column or the cell is empty."""
    if column is None:
        return [None] * len(chunk)
    return [v or None for v in chunk[column].str.strip().tolist()]


class _People:
    """The contacts a chunk's numbers and BSUIDs already belong to, so that a row naming a
    person by one identity is a duplicate of a row naming them by the other, and a BSUID row
    of a person whose number is known is sent to the number (Meta: `to` wins)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @staticmethod
    def person(contact_id: int) -> str:
        """The dedup key of a known contact (cannot be mistaken for a number or a BSUID)."""
        return f"#{contact_id}"

    def lookup(self, phones: list[str | None], user_ids: list[str | None]) -> dict[str, tuple[int, str | None, str | None]]:
        """Identity (number, BSUID, or an old BSUID) -> (contact id, its number, its BSUID)."""
        numbers = sorted({p for p in phones if p})
        bsuids = sorted({u for u in user_ids if u and identity.is_user_id(u)})
        found: dict[str, tuple[int, str | None, str | None]] = {}
        rows = []
        for chunk in batches(numbers):
            rows += self.session.execute(select(Contact.id, Contact.phone, Contact.user_id).where(Contact.phone.in_(chunk))).all()
        for chunk in batches(bsuids):
            rows += self.session.execute(select(Contact.id, Contact.phone, Contact.user_id).where(Contact.user_id.in_(chunk))).all()
            rows += self.session.execute(
                select(Contact.id, Contact.phone, Contact.user_id, ContactAlias.identity)
                .join(ContactAlias, ContactAlias.contact_id == Contact.id).where(ContactAlias.identity.in_(chunk))
            ).all()
        for row in rows:
            for name in row[1:]:
                if name:
                    found[name] = (row[0], row[1], row[2])
        return found


# -- reading and normalizing ---------------------------------------------------------------


@dataclass(frozen=True)
class _Numbers:
    """A chunk's normalized numbers as parallel lists: they cross the process boundary, and
    lists of strings pickle several times faster than a million small objects."""

    e164: list[str | None]
    detail: list[str | None]
    is_us: list[bool]
    keys: np.ndarray
    """Each number's `_int_key` (0 where there is none), for the duplicate check."""


def _normalize_all(raws: list[str], region: str | None, digits_are_international: bool) -> _Numbers:
    e164: list[str | None] = []
    detail: list[str | None] = []
    is_us: list[bool] = []
    for raw in raws:
        n = phone.normalize(raw, region, digits_are_international=digits_are_international)
        valid = isinstance(n, phone.Normalized)
        e164.append(n.e164 if valid else None)  # type: ignore[union-attr]
        detail.append(None if valid else n.detail)  # type: ignore[union-attr]
        is_us.append(valid and n.is_us)  # type: ignore[union-attr]
    # Here, in the workers, so that the main process does not convert them.
    return _Numbers(e164, detail, is_us, _int_keys(e164))


_INT_KEY = re.compile(r"[+#][1-9][0-9]{0,17}")
"""What `_int_key` takes: `[0-9]`, not `\\d`, which would take other scripts' digits too."""


def _int_key(identity_: str | None) -> int:
    """An identity as an int64 where it can be one, 0 where not (a BSUID): an E.164 number
    its digits (`+4915123456789` -> 4915123456789), a known contact (`_People.person`) its
    id negated (`#12` -> -12). One-to-one on what it takes: the sign, then a non-zero ASCII
    digit and at most 18 in all (E.164 numbers have at most 15)."""
    if identity_ and _INT_KEY.fullmatch(identity_):
        return int(identity_[1:]) if identity_[0] == "+" else -int(identity_[1:])
    return 0


def _int_keys(identities: list[str | None]) -> np.ndarray:
    """`_int_key` of each (inlined: this runs for every row, 0.4 us a number)."""
    match = _INT_KEY.fullmatch
    return np.fromiter([(int(i[1:]) if i[0] == "+" else -int(i[1:])) if i and match(i) else 0 for i in identities],
                       np.int64, len(identities))


class _Identities:
    """Identities (numbers, BSUIDs, `_People.person` keys), each with a line number: the
    duplicate check's memory (issue 14). A dict of strings cost about 120 bytes an identity
    (1.2 GB for 10M rows); here numbers and contact keys are int64s (`_int_key`) with an
    int32 line in a few sorted numpy runs, 12 bytes, and only BSUIDs are kept as strings.

    The int keys are looked up a chunk at a time (`find`), vectorized; the per-row check then
    asks a small dict of the chunk's hits (`_Classifier`).
    """

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []
        """Sorted (keys, lines), largest first: merged like a binary counter, so there are at
        most log2(numbers / chunk) + 1 of them and each number is copied as many times."""
        self.others: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(keys) for keys, _ in self.runs) + len(self.others)

    def add(self, identities: list[str | None], line: int) -> None:
        """Identities all on one line (or 0, for "already in the campaign"); None is skipped."""
        keys = _int_keys(identities)
        self.others.update((i, line) for i, k in zip(identities, keys.tolist()) if i and not k)
        self.add_keys(keys[keys != 0], np.full(int((keys != 0).sum()), line, np.int32))

    def add_keys(self, keys: np.ndarray, lines: np.ndarray) -> None:
        """Int keys (non-zero, none already here) with their lines."""
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order], lines[order].astype(np.int32, copy=False)))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= len(self.runs[-1][0]):
            keys_b, lines_b = self.runs.pop()
            keys_a, lines_a = self.runs.pop()
            # b's places in the merged run: where each goes in a, plus those of b before it.
            at = np.searchsorted(keys_a, keys_b) + np.arange(len(keys_b))
            from_a = np.ones(len(keys_a) + len(keys_b), bool)
            from_a[at] = False
            merged_keys = np.empty(len(from_a), np.int64)
            merged_lines = np.empty(len(from_a), np.int32)
            merged_keys[at], merged_lines[at] = keys_b, lines_b
            merged_keys[from_a], merged_lines[from_a] = keys_a, lines_a
            self.runs.append((merged_keys, merged_lines))

    def find(self, values: list[str | None], keys: np.ndarray) -> dict[str, int]:
        """Those of `values` (with their `_int_key`s) that are here as int keys, with their lines."""
        if not self.runs or not len(keys):
            return {}
        order = np.argsort(keys)
        wanted = keys[order]  # sorted, which makes searchsorted several times faster
        found = np.zeros(len(keys), bool)
        lines = np.zeros(len(keys), np.int32)
        for run_keys, run_lines in self.runs:
            at = np.minimum(np.searchsorted(run_keys, wanted), len(run_keys) - 1)
            hit = (run_keys[at] == wanted) & (wanted != 0)
            found[order[hit]] = True
            lines[order[hit]] = run_lines[at[hit]]
        return {values[i]: int(lines[i]) for i in np.flatnonzero(found).tolist()}  # type: ignore[misc]


def _pool_context() -> BaseContext:
    """`fork` where there is one: `spawn` re-imports the caller's `__main__`, which breaks a
    script without a `__main__` guard or one fed on standard input. The workers only run
    phonenumbers, which needs no lock another thread could hold at the fork."""
    methods = get_all_start_methods()
    return get_context("fork" if "fork" in methods else "spawn")


class _Reader:
    """The file in chunks, each with its numbers normalized, in order."""

    def __init__(self, layout: csvfile.CsvLayout, region: str | None, progress: ProgressCallback | None) -> None:
        self.layout = layout
        self.region = region
        self.progress = progress
        self.digits_are_international = (layout.phone_column or "").strip().lower() == "wa_id"

    def _frames(self) -> Iterator[tuple[pd.DataFrame, int]]:
        with self.layout.path.open("rb") as f, warnings.catch_warnings():
            # Rows longer than the header: pandas would take the first column as an index,
            # or (index_col=False) drop the extra fields with only a warning. Either loses data.
            # (Shorter rows pandas pads in silence: csvfile.check_short_rows refused them already.)
            warnings.simplefilter("error", pd.errors.ParserWarning)
            try:
                reader = pd.read_csv(
                    f,
                    sep=self.layout.delimiter,
                    dtype=str,
                    keep_default_na=False,
                    na_filter=False,
                    skip_blank_lines=False,
                    encoding="utf-8-sig",
                    index_col=False,
                    chunksize=CHUNK_ROWS,
                    engine="c",
                )
                first_line = 2
                for frame in reader:
                    frame.index = pd.RangeIndex(first_line, first_line + len(frame))
                    first_line += len(frame)
                    yield frame, f.tell()
            except pd.errors.ParserWarning:
                raise CampaignError(
                    f"{self.layout.path}: line 2 has more fields than the header ({len(self.layout.columns)})"
                ) from None
            except (pd.errors.ParserError, ValueError) as exc:
                message = str(exc).strip().splitlines()[-1].removeprefix("Error tokenizing data. C error: ")
                raise CampaignError(f"{self.layout.path}: {message}") from None

    def chunks(self, phase: str) -> Iterator[tuple[pd.DataFrame, _Numbers]]:
        frames = self._frames()
        if self.layout.size < PARALLEL_FROM_BYTES:
            for frame, position in frames:
                yield frame, self._normalize(frame)
                self._report(phase, position)
            return
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=_pool_context()) as pool:
            yield from self._pipelined(frames, pool, phase)

    def _pipelined(
        self, frames: Iterator[tuple[pd.DataFrame, int]], pool: Executor, phase: str
    ) -> Iterator[tuple[pd.DataFrame, _Numbers]]:
        # A bounded pipeline: Executor.map would read the whole file up front.
        pending: deque[tuple[pd.DataFrame, int, Future[_Numbers]]] = deque()
        depth = 2 * (os.cpu_count() or 1)
        for frame, position in frames:
            raws = self._raws(frame)
            pending.append((frame, position, pool.submit(_normalize_all, raws, self.region, self.digits_are_international)))
            if len(pending) >= depth:
                done_frame, done_position, future = pending.popleft()
                yield done_frame, future.result()
                self._report(phase, done_position)
        while pending:
            done_frame, done_position, future = pending.popleft()
            yield done_frame, future.result()
            self._report(phase, done_position)

    def _normalize(self, frame: pd.DataFrame) -> _Numbers:
        return _normalize_all(self._raws(frame), self.region, self.digits_are_international)

    def _raws(self, frame: pd.DataFrame) -> list[str]:
        """The phone column's values; all empty in a file of BSUIDs only."""
        if self.layout.phone_column is None:
            return [""] * len(frame)
        return frame[self.layout.phone_column].tolist()

    def _report(self, phase: str, position: int) -> None:
        if self.progress is not None:
            self.progress(phase, min(position, self.layout.size), self.layout.size)


# -- classifying and writing ---------------------------------------------------------------


@dataclass
class _Accepted:
    lines: list[int] = field(default_factory=list)
    phones: list[str | None] = field(default_factory=list)
    user_ids: list[str | None] = field(default_factory=list)
    """The BSUID to keep with the number, or to send to when the number is None."""
    positions: list[int] = field(default_factory=list)
    """Row positions in the chunk, to pick their serialized params."""


class _Classifier:
    """Decides each row: accepted, or rejected with the first reason that applies.

    The duplicate check keeps every accepted identity with its line (`seen`) compactly; per
    chunk, the chunk's numbers are looked up there and in `existing` at once, and the rows are
    then checked against two small dicts: `_seen_here` (the chunk's numbers and contact keys
    seen before it, then every identity accepted in it) and `_existing_here`; BSUIDs, kept as
    strings, are looked up one by one."""

    def __init__(self, existing: _Identities, suppressed: dict[str, str], unreachable: dict[str, str],
                 checks: list[tuple[Target, str]], authentication: bool = False) -> None:
        self.existing = existing
        self.suppressed = suppressed
        self.unreachable = unreachable
        self.checks = checks
        self.authentication = authentication
        self.seen = _Identities()
        self._seen_here: dict[str, int] = {}
        self._existing_here: dict[str, int] = {}

    def classify(
        self, chunk: pd.DataFrame, numbers: _Numbers, user_ids: list[str | None],
        known: dict[str, tuple[int, str | None, str | None]] | None, result: ImportResult, rejects: _RejectsWriter,
    ) -> _Accepted:
        blank = (chunk == "").all(axis=1).tolist()
        bad = self._bad_params(chunk)
        accepted = _Accepted()
        values, keys_ = numbers.e164, numbers.keys
        if known:  # a known person's number and contact key can be a row's identities too
            extra = [c[1] for c in known.values() if c[1]] + [_People.person(c[0]) for c in known.values()]
            values, keys_ = values + extra, np.concatenate([keys_, _int_keys(extra)])
        before = self.seen.find(values, keys_)
        self._existing_here = self.existing.find(values, keys_)
        self._seen_here = dict(before)
        one_number_each = True
        rejected: list[tuple[int, Reason, str, int]] = []
        for position, (line, e164, user_id) in enumerate(zip(chunk.index, numbers.e164, user_ids)):
            if blank[position]:
                continue  # an empty line is not a row
            result.rows += 1
            invalid = numbers.detail[position]
            if user_id is not None and e164 is None and invalid == "empty":
                invalid = None  # a BSUID recipient: no number to normalize
            if user_id is None and known is None:  # a file of numbers only: the hot path
                keys, phone_, user_id_ = ([e164] if e164 else []), e164, None
            else:
                keys, phone_, user_id_ = self._identities(e164, user_id, known)
                one_number_each = False
            reason, detail = self._reject_reason(keys, invalid, user_id, bad[position])
            if reason is not None:
                result.count(reason)
                rejected.append((line, reason, detail, position))
                continue
            for key in keys:
                self._seen_here[key] = line
            result.us_numbers += numbers.is_us[position] or (phone_ is None and identity.user_id_country(user_id_ or "") == "US")
            accepted.lines.append(line)
            accepted.phones.append(phone_)
            accepted.user_ids.append(user_id_)
            accepted.positions.append(position)
        self._remember(len(before), numbers.keys[accepted.positions] if one_number_each else None)
        if rejected:  # their cells taken at once: `chunk.iloc[position]` row by row cost 45 us a row
            cells = chunk.iloc[[r[3] for r in rejected]].to_numpy(dtype=object).tolist()
            for (line, reason, detail, _), values in zip(rejected, cells):
                rejects.write(line, reason, detail, values)
        return accepted

    def _remember(self, before: int, keys: np.ndarray | None) -> None:
        """Moves the identities the chunk accepted from `_seen_here` into `seen`: `keys` are
        their int keys when each accepted row added only its own number (in order)."""
        new = list(islice(self._seen_here.items(), before, None))  # after the chunk's hits, in order
        self._seen_here = {}
        if keys is not None and keys.all():
            self.seen.add_keys(keys, np.fromiter((line for _, line in new), np.int32, len(new)))
        else:
            ints, lines = [], []
            for identity_, line in new:
                if key := _int_key(identity_):
                    ints.append(key)
                    lines.append(line)
                else:
                    self.seen.others[identity_] = line
            self.seen.add_keys(np.array(ints, np.int64), np.array(lines, np.int32))

    @staticmethod
    def _identities(e164: str | None, user_id: str | None, known: dict[str, tuple[int, str | None, str | None]] | None,
                    ) -> tuple[list[str], str | None, str | None]:
        """The row's dedup keys (its number, BSUID, and the contact either belongs to), and the
        number and BSUID to stage: a known person's current ones where the row names them by
        a BSUID only (or an old BSUID), the row's own otherwise."""
        if user_id is not None and not identity.is_user_id(user_id):
            return [], e164, user_id
        keys = [k for k in (e164, user_id) if k]
        if not known:
            return keys, e164, user_id
        by_phone = known.get(e164) if e164 else None
        by_user_id = known.get(user_id) if user_id else None
        keys += [_People.person(c[0]) for c in (by_phone, by_user_id) if c]
        if by_phone is not None and by_phone[2]:
            keys.append(by_phone[2])  # the person's BSUID: suppressed, or on another row
        if e164 is None and by_user_id is not None:
            contact_id, phone_, current = by_user_id
            keys += [k for k in (phone_, current) if k]
            return keys, phone_, current if phone_ is None else None
        return keys, e164, user_id

    def _reject_reason(self, keys: list[str], invalid: str | None, user_id: str | None,
                       bad: str) -> tuple[Reason | None, str]:
        if user_id is not None and (problem := identity.user_id_problem(user_id)):
            return Reason.INVALID_NUMBER, problem
        if invalid is not None:
            return Reason.INVALID_NUMBER, invalid or ""
        if bad:
            return Reason.BAD_PARAM, bad
        name = keys[0]
        if self.authentication and not name.startswith("+") and not any(k.startswith("+") for k in keys):
            return Reason.INVALID_NUMBER, (f"{name}: Meta does not send authentication templates to a user known only "
                                           "by a business-scoped user id (131062)")
        seen_others = self.seen.others
        for key in keys:
            line = self._seen_here.get(key)
            if line is None and seen_others:
                line = seen_others.get(key)
            if line is not None:
                return Reason.DUPLICATE, f"{name} is also on line {line}" + ("" if key == name else " (the same person)")
        existing_others = self.existing.others
        for key in keys:
            if key in self._existing_here or (existing_others and key in existing_others):
                return Reason.DUPLICATE, f"{name} is already in the campaign"
        for key in keys:
            if key in self.suppressed:
                return Reason.SUPPRESSED, self.suppressed[key]
        if name in self.unreachable:
            return Reason.NOT_ON_WHATSAPP, self.unreachable[name]
        return None, ""

    def _bad_params(self, chunk: pd.DataFrame) -> list[str]:
        """Per row, the first bound value Meta would refuse (`body.1 (text): is empty`), or `""`.

        The rules are binding.value_problem's; they are found here vectorized (a million rows
        in well under a second a column) and only the rows found are described one by one."""
        found = [""] * len(chunk)
        for target, column in self.checks:
            values = chunk[column]
            suspect = values.str.strip() == ""
            if target.kind in _WHITESPACE_KINDS:
                suspect |= values.str.contains(binding.WHITESPACE, regex=True)
            if target.max_length is not None:
                suspect |= values.str.len() > target.max_length
            if target.kind in MEDIA_KINDS:
                suspect |= ~values.str.match(r"https?://", case=False)
            if target.kind is Kind.OFFER or target.kind is Kind.LOCATION:
                suspect[:] = True  # rare targets: every value is checked by the rule itself
            for position in suspect.to_numpy().nonzero()[0]:
                if not found[position]:
                    problem = binding.value_problem(target, values.iat[position])
                    if problem:
                        found[position] = f"{target.key} ({binding.what(target)}): {problem}"
        return found


_WHITESPACE_KINDS = frozenset({Kind.TEXT, Kind.URL, Kind.COPY_CODE, Kind.OTP, Kind.QUICK_REPLY, Kind.FLOW})


class _Batch:
    """Writes each chunk's accepted rows set-based, through a staging table.

    The rows go to a temporary table with the driver's own `executemany` (no per-row ORM or
    type processing: that was 20 us a row, most of a million-row import), then a few
    statements do the rest on both dialects: new numbers and BSUIDs become contacts (shared by
    every campaign; a BSUID given with a number is kept with it, and a contact known only by
    that BSUID takes the number), and every staged row becomes a `queued` message joined to
    its contact. Files without BSUIDs run only the two statements they always did.
    """

    def __init__(self, session: Session, campaign: Campaign, import_id: int, now: datetime) -> None:
        self.session = session
        self.constants = {"campaign_id": campaign.id, "import_id": import_id, "state": MessageState.QUEUED.value, "now": now}
        self.written = 0
        connection = session.connection()
        self.postgres = connection.dialect.name == "postgresql"
        placeholder = "?" if connection.dialect.paramstyle == "qmark" else "%s"
        self.stage_sql = (f"INSERT INTO import_staging (phone, user_id, row_number, params) "
                          f"VALUES ({placeholder}, {placeholder}, {placeholder}, {placeholder})")
        on_commit = " ON COMMIT DROP" if self.postgres else ""
        connection.exec_driver_sql("DROP TABLE IF EXISTS temp.import_staging" if not self.postgres else "DROP TABLE IF EXISTS import_staging")
        connection.exec_driver_sql(
            "CREATE TEMPORARY TABLE import_staging (phone VARCHAR(20), user_id VARCHAR(160), row_number INTEGER, "
            f"params TEXT NOT NULL){on_commit}"
        )

    def write(self, chunk: pd.DataFrame, accepted: _Accepted) -> None:
        if not accepted.phones:
            return
        # pandas serializes the chunk at C speed; one json.dumps per row costs seconds per million.
        params = chunk.iloc[accepted.positions].to_json(orient="records", lines=True, force_ascii=False).split("\n")
        connection = self.session.connection()
        connection.exec_driver_sql(self.stage_sql, list(zip(accepted.phones, accepted.user_ids, accepted.lines, params)))
        with_user_ids = any(u is not None for u in accepted.user_ids)
        if with_user_ids:
            self.session.execute(_NUMBERS_FOR_USER_IDS)
        self.session.execute(_NEW_CONTACTS)
        self.session.execute(_STAGED_MESSAGES, self.constants)
        if with_user_ids:
            self.session.execute(_USER_IDS_FOR_NUMBERS)
            self.session.execute(_NEW_USER_ID_CONTACTS)
            self.session.execute(_STAGED_USER_ID_MESSAGES, self.constants)
        connection.exec_driver_sql("DELETE FROM import_staging")
        self.written += len(accepted.phones)


# `WHERE true` lets SQLite tell the upsert's ON CONFLICT from a join condition.
_NEW_CONTACTS = text("INSERT INTO contacts (phone) SELECT phone FROM import_staging WHERE phone IS NOT NULL "
                     "ON CONFLICT (phone) DO NOTHING")
_NEW_USER_ID_CONTACTS = text("INSERT INTO contacts (user_id) SELECT user_id FROM import_staging WHERE phone IS NULL "
                             "ON CONFLICT (user_id) DO NOTHING")
_NUMBERS_FOR_USER_IDS = text(
    # A person known only by their BSUID, imported now with a number: the contact takes it.
    "UPDATE contacts SET phone = (SELECT s.phone FROM import_staging s WHERE s.user_id = contacts.user_id) "
    "WHERE phone IS NULL AND user_id IN (SELECT user_id FROM import_staging WHERE phone IS NOT NULL) "
    "AND NOT EXISTS (SELECT 1 FROM contacts c JOIN import_staging s ON c.phone = s.phone WHERE s.user_id = contacts.user_id)"
)
_USER_IDS_FOR_NUMBERS = text(
    "UPDATE contacts SET user_id = (SELECT s.user_id FROM import_staging s WHERE s.phone = contacts.phone) "
    "WHERE user_id IS NULL AND phone IN (SELECT phone FROM import_staging WHERE user_id IS NOT NULL) "
    "AND NOT EXISTS (SELECT 1 FROM contacts c JOIN import_staging s ON c.user_id = s.user_id WHERE s.phone = contacts.phone)"
)
_STAGED_MESSAGES = text(
    "INSERT INTO messages (campaign_id, contact_id, import_id, row_number, params, state, attempts, queued_at) "
    "SELECT :campaign_id, c.id, :import_id, s.row_number, s.params, :state, 0, :now "
    "FROM import_staging s JOIN contacts c ON c.phone = s.phone"
).bindparams(bindparam("now", type_=UTCDateTime()))
_STAGED_USER_ID_MESSAGES = text(
    "INSERT INTO messages (campaign_id, contact_id, import_id, row_number, params, state, attempts, queued_at) "
    "SELECT :campaign_id, c.id, :import_id, s.row_number, s.params, :state, 0, :now "
    "FROM import_staging s JOIN contacts c ON c.user_id = s.user_id WHERE s.phone IS NULL"
).bindparams(bindparam("now", type_=UTCDateTime()))


class _RejectsWriter:
    """Rejected rows with their reason, into `temp` (`files.atomic_path` beside `path`), which
    is created at the first rejected row: an import without rejects writes no file."""

    def __init__(self, path: Path, temp: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        self.count = 0
        self._temp = temp
        self._file = None
        self._writer: csv.writer | None = None  # type: ignore[valid-type]

    def write(self, line: int, reason: Reason, detail: str, values: list[str]) -> None:
        if self._writer is None:
            try:
                self._file = self._temp.open("w", newline="", encoding="utf-8")
            except OSError as exc:
                raise CampaignError(f"{self.path}: cannot write the rejects file ({exc.strerror})") from None
            self._writer = csv.writer(self._file)
            self._writer.writerow(["line", "reason", "detail", *self.columns])
        self._writer.writerow([line, reason.value, detail, *values])
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

