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
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path

import pandas as pd
from sqlalchemy import bindparam, select, text
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
        candidates = {e164 for _, numbers in reader.chunks("normalizing") for e164 in numbers.e164 if e164}
        check = contacts.check(
            db, candidates, now, contacts_endpoint, None if progress is None else lambda d, t: progress("checking", d, t)
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


def _campaign_identities(session: Session, campaign_id: int, *, with_user_ids: bool) -> set[str]:
    """What the campaign's recipients are already known by: their numbers, and for a file with
    BSUIDs also their BSUIDs, old ids (aliases) and contact ids (`_People.person`)."""
    query = select(Contact.phone).join(Message, Message.contact_id == Contact.id).where(Message.campaign_id == campaign_id)
    existing = {p for p in session.scalars(query) if p}
    if with_user_ids:
        in_campaign = select(Message.contact_id).where(Message.campaign_id == campaign_id)
        for contact_id, user_id in session.execute(select(Contact.id, Contact.user_id).where(Contact.id.in_(in_campaign))):
            existing.update(i for i in (user_id, _People.person(contact_id)) if i)
        existing.update(session.scalars(select(ContactAlias.identity).where(ContactAlias.contact_id.in_(in_campaign))))
    return existing


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


def _normalize_all(raws: list[str], region: str | None, digits_are_international: bool) -> _Numbers:
    numbers = _Numbers([], [], [])
    for raw in raws:
        n = phone.normalize(raw, region, digits_are_international=digits_are_international)
        valid = isinstance(n, phone.Normalized)
        numbers.e164.append(n.e164 if valid else None)  # type: ignore[union-attr]
        numbers.detail.append(None if valid else n.detail)  # type: ignore[union-attr]
        numbers.is_us.append(valid and n.is_us)  # type: ignore[union-attr]
    return numbers


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
    """Decides each row: accepted, or rejected with the first reason that applies."""

    def __init__(self, existing: set[str], suppressed: dict[str, str], unreachable: dict[str, str],
                 checks: list[tuple[Target, str]], authentication: bool = False) -> None:
        self.existing = existing
        self.suppressed = suppressed
        self.unreachable = unreachable
        self.checks = checks
        self.authentication = authentication
        self.seen: dict[str, int] = {}

    def classify(
        self, chunk: pd.DataFrame, numbers: _Numbers, user_ids: list[str | None],
        known: dict[str, tuple[int, str | None, str | None]] | None, result: ImportResult, rejects: _RejectsWriter,
    ) -> _Accepted:
        blank = (chunk == "").all(axis=1).tolist()
        bad = self._bad_params(chunk)
        accepted = _Accepted()
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
            reason, detail = self._reject_reason(keys, invalid, user_id, bad[position])
            if reason is not None:
                result.count(reason)
                rejects.write(line, reason, detail, chunk.iloc[position].tolist())
                continue
            self.seen.update((k, line) for k in keys)
            result.us_numbers += numbers.is_us[position] or (phone_ is None and identity.user_id_country(user_id_ or "") == "US")
            accepted.lines.append(line)
            accepted.phones.append(phone_)
            accepted.user_ids.append(user_id_)
            accepted.positions.append(position)
        return accepted

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
        for key in keys:
            if key in self.seen:
                return Reason.DUPLICATE, f"{name} is also on line {self.seen[key]}" + ("" if key == name else " (the same person)")
        for key in keys:
            if key in self.existing:
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

