"""The `campaign` command: parse options, call the library, render the answer.

Expected errors (`CampaignError`) print one line `error: ...` on stderr and exit 1; click's
usage errors exit 2. Progress bars show on a terminal and stay quiet in pipes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from campaign import campaigns, contacts, inbound, sending, suppressions
from campaign.config import RedactSecrets, Settings, load_settings
from campaign.db import Database
from campaign.dispatcher import DispatchStats
from campaign.exceptions import CampaignError

F = TypeVar("F", bound=Callable[..., Any])
stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)


@dataclass
class AppContext:
    settings: Settings

    def database(self, *, migrate: bool = True) -> Database:
        return Database.open(self.settings.database_url, migrate=migrate)


def handle_errors(command: F) -> F:
    """Turn expected errors into `error: ...` and exit 1, never a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CampaignError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except BrokenPipeError:  # `campaign report -o - | head`: the reader has what it wanted
            sys.stderr.close()
            sys.exit(0)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar=None, help="SQLAlchemy URL (default: CAMPAIGN_DATABASE_URL, then sqlite:///campaign.db).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="campaign")
@click.pass_context
@handle_errors
def main(ctx: click.Context, database_url: str | None, verbose: int) -> None:
    """Bulk WhatsApp campaigns through Meta's WhatsApp Cloud API."""
    settings = load_settings().with_overrides(database_url=database_url)
    _configure_logging(verbose, settings)
    ctx.obj = AppContext(settings)


def _configure_logging(verbose: int, settings: Settings) -> None:
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(settings.secrets()))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # httpx (the sandbox's webhook deliveries) logs every request URL at INFO: keep it quiet.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))


pass_app = click.make_pass_decorator(AppContext)


# -- db --------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@pass_app
@handle_errors
def db_upgrade(app: AppContext) -> None:
    """Apply the Alembic migrations."""
    database = app.database(migrate=False)
    before, head = database.schema_revisions()
    database.upgrade()
    click.echo(f"database at revision {head}" + (" (already current)" if before == head else f" (was {before or 'empty'})"))


# -- create ----------------------------------------------------------------------------------


@main.command()
@click.argument("name")
@click.option("--template", required=True, help="Approved template name.")
@click.option("--language", required=True, help="Template language code, e.g. en_US.")
@click.option("--param", "params", multiple=True, metavar="COLUMN", help="CSV column filling {{1}}, {{2}}, ... in order.")
@click.option("--bind", "binds", multiple=True, metavar="TARGET=SOURCE",
              help="Fill a template part: header, body.N, body.NAME, button.N, card.K.header|body.N|button.N, offer; "
                   "from a COLUMN, =LITERAL, https://link, media:ID or file:PATH (see `campaign templates`).")
@click.option("--text", help="Free-form body with {column} placeholders, for recipients whose 24-hour window is open.")
@click.option("--header-image", metavar="URL")
@click.option("--header-video", metavar="URL")
@click.option("--header-document", metavar="URL")
@click.option("--phone-number-id", help="Sender phone-number id (default WA_PHONE_NUMBER_ID).")
@click.option("--mps", type=int, help="Send cap for this campaign, messages per second.")
@click.option(
    "--category",
    type=click.Choice(campaigns.TEMPLATE_CATEGORIES),
    help="The template's category, if known before launch reads it (marketing is not delivered to US numbers).",
)
@click.option("--send-window", metavar="HH:MM-HH:MM",
              help="Send only between these hours of the recipient's local time (from the number), e.g. 09:00-20:00.")
@click.option("--timezone", "timezone_", metavar="ZONE",
              help="The send window's zone for numbers that place the recipient in none (IANA name; default UTC).")
@pass_app
@handle_errors
def create(
    app: AppContext,
    name: str,
    template: str,
    language: str,
    params: tuple[str, ...],
    binds: tuple[str, ...],
    text: str | None,
    header_image: str | None,
    header_video: str | None,
    header_document: str | None,
    phone_number_id: str | None,
    mps: int | None,
    category: str | None,
    send_window: str | None,
    timezone_: str | None,
) -> None:
    """Create campaign NAME in state draft."""
    headers = {k: v for k, v in (("image", header_image), ("video", header_video), ("document", header_document)) if v}
    if len(headers) > 1:
        raise CampaignError("give at most one of --header-image, --header-video, --header-document")
    header_type, header_link = next(iter(headers.items()), (None, None))
    spec = campaigns.CampaignSpec(
        name=name, template=template, language=language, params=list(params), binds=list(binds), text=text,
        header_type=header_type, header_link=header_link, phone_number_id=phone_number_id, mps=mps, category=category,
        send_window=send_window, timezone=timezone_,
    )
    database = app.database()
    with database.session() as session:
        campaigns.create(session, spec)
    click.echo(f"created campaign {name!r} (draft): template {template} [{language}]")


@main.command("templates")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
@handle_errors
def templates_(app: AppContext, name: str | None, as_json: bool) -> None:
    """The WABA's templates (NAME's only, when given) and the targets each needs bound."""
    found = [info for _, info in sending.templates(app.settings, name)]
    if name and not found:
        raise CampaignError(f"template {name!r} does not exist in this WhatsApp Business Account")
    rows = [{"name": i.name, "language": i.language, "status": i.status, "category": i.category,
             "parameter_format": i.parameter_format, "targets": [t.key for t in i.targets], "needs": i.describe()}
            for i in sorted(found, key=lambda i: (i.name, i.language))]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no templates in this WhatsApp Business Account")
        return
    table = Table("name", "language", "status", "category", "bind", box=None)
    for row in rows:
        table.add_row(escape(row["name"]), row["language"], row["status"], row["category"] or "", escape(row["needs"]))
    stdout.print(table)


@main.command("sender")
@click.argument("phone_number_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
@handle_errors
def sender(app: AppContext, phone_number_id: str | None, as_json: bool) -> None:
    """The sender's health as Meta reports it (default WA_PHONE_NUMBER_ID), and the daily budget."""
    from campaign import health
    from campaign.clock import utcnow

    report = health.check_sender(app.database(), app.settings, phone_number_id, now=utcnow())
    if as_json:
        click.echo(json.dumps(report.as_json()))
        return
    h = report.health
    budget = report.daily_budget if report.daily_budget is not None else "none"
    for label, value in (("sender", f"{h.phone_number_id} {h.display_phone_number or ''} {h.verified_name or ''}"),
                         ("status", h.status), ("quality rating", h.quality_rating),
                         ("messaging limit", h.messaging_limit), ("throughput", h.throughput),
                         ("daily budget", f"{budget} ({report.budget_source})")):
        click.echo(f"{label + ':':17}{(value or '?').strip() if isinstance(value, str) else value}")


@main.command("estimate")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--rates", "rates_file", type=click.Path(dir_okay=False, path_type=str), metavar="FILE",
              help="Another rate card in the same format (default: the card the project ships).")
@pass_app
@handle_errors
def estimate_(app: AppContext, name: str, as_json: bool, rates_file: str | None) -> None:
    """Before launch: NAME's queued messages by country and category, in an open window, skipped, and their cost."""
    from campaign import estimate
    from campaign.clock import utcnow

    card = estimate.load_card(rates_file)
    figures = estimate.estimate_campaign(app.database(), name, card, now=utcnow(),
                                         unreachable_days=app.settings.unreachable_days,
                                         marketing_frequency=app.settings.marketing_frequency)
    data = figures.as_dict()
    if as_json:
        click.echo(json.dumps(data))
        return
    cur = card.currency
    category = figures.category or f"unknown (priced as {figures.priced_as}, the safe side)"
    stdout.print(f"Campaign {escape(name)!r}: {figures.total:,} queued message(s), template category {category}"
                 + (", free-form text inside the window" if figures.has_text else ""))
    table = Table("country", "market", "category", "messages", "in window", "free", "billable", f"rate {cur}",
                  f"cost {cur}", box=None)
    for line in figures.lines:
        table.add_row(line.country, escape(line.market), line.category, f"{line.messages:,}", f"{line.in_window:,}",
                      f"{line.free:,}", f"{line.billable:,}", f"{line.rate:.4f}", f"{line.cost:,.2f}")
    if figures.lines:
        stdout.print(table)
    stdout.print(f"To send {figures.to_send:,}: {figures.in_window:,} inside an open 24-hour window, "
                 f"{figures.free:,} free, {figures.billable:,} billable")
    if figures.skipped:
        stdout.print(f"Skipped by the rules: {sum(figures.skipped.values()):,}")
        for reason, count in sorted(figures.skipped.items()):
            stdout.print(f"  {count:>9,}  {escape(estimate.SKIP_REASONS.get(reason, reason))}")
    stdout.print(f"Estimated cost: {figures.cost:,.2f} {cur}")
    by_category = data["by_category"]
    if by_category:
        stdout.print("  by category: " + ", ".join(f"{c} {v['cost']:,.2f}" for c, v in by_category.items()))
    stdout.print(f"Rate card {escape(card.name)}, effective {card.effective_date} ({escape(card.path)}); "
                 f"source: {escape(card.source)}")
    if card.note:
        stdout.print(f"  note: {escape(card.note)}")


# -- import ----------------------------------------------------------------------------------


@main.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--phone-column", help="Column holding the number (default: phone, phone_number, msisdn, mobile, wa_id, to).")
@click.option("--user-id-column", metavar="COL",
              help="Column of WhatsApp business-scoped user ids (default: user_id); a row with one and no number is sent by it.")
@click.option("--default-region", metavar="CC", help="Region for numbers without a country code, e.g. DE.")
@click.option("--check-contacts/--no-check-contacts", default=False, help="Drop numbers not on WhatsApp (off: no network call).")
@click.option("--rejects", "rejects_path", metavar="PATH", help="Where rejected rows go (default NAME-rejects.csv).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@pass_app
@handle_errors
def import_(
    app: AppContext,
    name: str,
    file: str,
    phone_column: str | None,
    user_id_column: str | None,
    default_region: str | None,
    check_contacts: bool,
    rejects_path: str | None,
    as_json: bool,
) -> None:
    """Add FILE's rows to campaign NAME as recipients."""
    from campaign.importer import ImportOptions, import_file  # pandas: loaded only for imports

    database = app.database()
    options = ImportOptions(phone_column, default_region, check_contacts, rejects_path, user_id_column)
    endpoint = contacts.endpoint_for(database, app.settings, name) if check_contacts else None
    with _progress("import") as progress:
        result = import_file(database, name, file, options, contacts_endpoint=endpoint, progress=progress)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        figures = result.as_dict()
        figures.pop("warnings")
        click.echo(json.dumps(figures))
    else:
        click.echo(result.summary_line())
        if result.rejects_file:
            click.echo(f"rejected rows and their reasons: {result.rejects_file}", err=True)


@contextmanager
def _progress(label: str) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar on a terminal; `None` (no output) in a pipe."""
    if not stderr.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(f"{label}: {phase}", total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


# -- suppress / unsuppress -------------------------------------------------------------------


@main.command()
@click.argument("phones", nargs=-1)
@click.option("--file", "file", type=click.Path(path_type=str), help="A CSV with a phone column, or one number per line.")
@click.option("--reason", help="Why (kept with each number).")
@click.option("--default-region", metavar="CC", help="Region for numbers without a country code.")
@pass_app
@handle_errors
def suppress(app: AppContext, phones: tuple[str, ...], file: str | None, reason: str | None, default_region: str | None) -> None:
    """Add numbers (or BSUIDs) to the opt-out list: no campaign will message them."""
    numbers = suppressions.identities_of(phones, default_region)
    if file:
        numbers += suppressions.read_numbers(file, default_region)
    if not numbers:
        raise click.UsageError("give PHONE... or --file FILE")
    with app.database().session() as session:
        added = suppressions.suppress(session, numbers, reason=reason)
    click.echo(f"suppressed {added} number{'s' if added != 1 else ''}" + (f" ({len(set(numbers)) - added} already were)" if len(set(numbers)) > added else ""))


@main.command()
@click.argument("phones", nargs=-1, required=True)
@click.option("--default-region", metavar="CC", help="Region for numbers without a country code.")
@pass_app
@handle_errors
def unsuppress(app: AppContext, phones: tuple[str, ...], default_region: str | None) -> None:
    """Remove numbers (or BSUIDs) from the opt-out list."""
    numbers = suppressions.identities_of(phones, default_region)
    with app.database().session() as session:
        removed = suppressions.unsuppress(session, numbers)
    click.echo(f"unsuppressed {removed} number{'s' if removed != 1 else ''}")


# -- status ----------------------------------------------------------------------------------


@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
@handle_errors
def status(app: AppContext, name: str | None, as_json: bool) -> None:
    """One line per campaign, or NAME's state and counts per message state."""
    database = app.database()
    with database.read_session() as session:
        found = [campaigns.get(session, name)] if name else campaigns.list_all(session)
        counted = campaigns.counts(session, [c.id for c in found])
        unmatched = inbound.unmatched_counts(session)
    reports = [
        {"name": c.name, "state": c.state, "total": counted[c.id].total, "counts": counted[c.id].by_state}
        | ({"pause_reason": c.pause_reason} if c.pause_reason else {})
        for c in found
    ]
    if name:
        figures = sending.progress(database, found[0].id)
        reports[0]["rate"] = round(figures.rate, 2)
        reports[0]["eta_seconds"] = None if figures.eta_seconds is None else round(figures.eta_seconds)
        if figures.send_window is not None:
            reports[0]["send_window"] = {
                "window": found[0].send_window, "timezone": found[0].timezone or "UTC",
                "waiting": figures.send_window.count,
                "next_open": figures.send_window.next_open.isoformat() if figures.send_window.next_open else None}
        if figures.marketing_waiting:
            until = figures.marketing_waiting_until
            reports[0]["marketing_limited"] = {"waiting": figures.marketing_waiting,
                                               "until": until.isoformat() if until else None}
    if as_json:
        if name and unmatched:
            reports[0]["unmatched_inbound"] = unmatched
        click.echo(json.dumps(reports[0] if name else reports))
        return
    if name:
        _print_campaign(found[0], reports[0])
    else:
        _print_campaigns(reports)
    if unmatched:
        # Not a campaign's own: an opt-out kept for whoever turns out to have that BSUID.
        stdout.print(f"{unmatched.get('inbound', 0)} inbound message(s) and {unmatched.get('preference', 0)} marketing "
                     "preference(s) from users known only by a business-scoped user id wait for a contact with that id "
                     "(they apply when a webhook or an import names them)")


def _print_campaign(campaign: Any, report: dict[str, Any]) -> None:
    stdout.print(
        f"[bold]{escape(campaign.name)}[/bold]  {campaign.state}  "
        f"template {escape(campaign.template_name)} {escape('[' + campaign.template_language + ']')}"
    )
    if campaign.pause_reason:
        stdout.print(f"paused by the engine: {escape(campaign.pause_reason)}")
    table = Table(show_header=True, box=None)
    for state in report["counts"]:
        table.add_column(state, justify="right")
    table.add_column("total", justify="right")
    table.add_row(*(str(n) for n in report["counts"].values()), str(report["total"]))
    stdout.print(table)
    if waiting := report.get("marketing_limited"):
        stdout.print(f"{waiting['waiting']} wait for Meta's per-user marketing limit (131049), "
                     f"the last until {waiting['until']}")
    if (window := report.get("send_window")) and window["waiting"]:
        stdout.print(f"{window['waiting']} wait for their send window ({window['window']} local time); "
                     f"the next opens at {window['next_open'] or 'not within a week'}")
    if report.get("rate") and campaign.state == "running":
        eta = report["eta_seconds"]
        stdout.print(f"sending {report['rate']:.1f} messages/s" + (f", about {_duration(eta)} left" if eta else ""))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _print_campaigns(reports: list[dict[str, Any]]) -> None:
    if not reports:
        click.echo("no campaigns yet (create one with `campaign create`)")
        return
    table = Table("name", "state", "total", "queued", "sent", "delivered", "read", "failed", box=None)
    for r in reports:
        c = r["counts"]
        table.add_row(escape(r["name"]), r["state"], str(r["total"]), *(str(c[s]) for s in ("queued", "sent", "delivered", "read", "failed")))
    stdout.print(table)


# -- sending -----------------------------------------------------------------------------------


def _parse_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise CampaignError(f"--at {value!r} is not an ISO 8601 time such as 2026-12-01T09:00:00+01:00") from None
    return at if at.tzinfo else at.astimezone()  # a time without offset is local time


@main.command()
@click.argument("name")
@click.option("--at", "at", metavar="ISO8601", help="Start at this time instead of now.")
@click.option("--detach", is_flag=True, help="Only change the state; a `campaign worker` sends.")
@pass_app
@handle_errors
def launch(app: AppContext, name: str, at: str | None, detach: bool) -> None:
    """Start campaign NAME (draft or paused), in the foreground unless --detach."""
    database = app.database()
    # In the foreground this process sends next: its token and sender are checked with the
    # template, before the state changes (a refused launch leaves the campaign as it was).
    campaign = sending.launch(database, app.settings, name, at=_parse_at(at), warn=_warn, sends_here=not detach)
    if campaign.state == "scheduled":
        click.echo(f"campaign {name!r} scheduled for {campaign.scheduled_at:%Y-%m-%d %H:%M:%S %Z}", err=True)
    if detach:
        click.echo(f"campaign {name!r} is {campaign.state}; `campaign worker` sends it")
        return
    _send_in_foreground(app, database, name)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _send_in_foreground(app: AppContext, database: Database, name: str) -> None:
    """Send until the campaign completes, pauses or is cancelled; Ctrl-C pauses it."""
    with database.read_session() as session:
        campaign_id = campaigns.get(session, name).id
    bar_update, bar_close = _send_progress(database, name, campaign_id)
    try:
        run = sending.run_worker(database, app.settings, campaigns_=[name], exit_when_idle=True, on_progress=bar_update,
                                 handle_signals=True, pause_on_interrupt=True)
    finally:
        bar_close()
    if run.interrupted:
        click.echo(f"paused campaign {name!r}; `campaign resume {name}` continues where it stopped", err=True)
    with database.read_session() as session:
        campaign = campaigns.get(session, name)
    click.echo(f"campaign {name!r} is {campaign.state}: sent {run.stats.sent}, failed {run.stats.failed} by this run")
    if campaign.pause_reason:
        click.echo(f"paused by the engine: {campaign.pause_reason}", err=True)
    from campaign import render, summary

    click.echo(render.format_summary(summary.summary(database, name)))


def _send_progress(database: Database, name: str, campaign_id: int) -> tuple[Callable[[DispatchStats], None], Callable[[], None]]:
    """A progress bar of messages settled (sent, failed, skipped) out of the campaign's total."""
    if not stderr.is_terminal:
        return (lambda stats: None), (lambda: None)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[detail]}"), TimeRemainingColumn())
    bar = Progress(*columns, console=stderr, transient=False)
    bar.start()
    task = bar.add_task(f"sending {escape(name)}", total=None, detail="")
    last = 0.0

    def update(stats: DispatchStats) -> None:
        nonlocal last
        if time.monotonic() - last < 0.5:
            return
        last = time.monotonic()
        counts = sending.progress(database, campaign_id).counts.by_state
        total = sum(counts.values())
        bar.update(task, total=total, completed=total - counts["queued"] - counts["sending"],
                   detail=f"sent {stats.sent} failed {stats.failed} {stats.rate:.1f}/s")

    return update, bar.stop


@main.command()
@click.argument("name")
@pass_app
@handle_errors
def pause(app: AppContext, name: str) -> None:
    """Stop sending campaign NAME (within about a second)."""
    with app.database().session() as session:
        campaigns.pause(session, campaigns.get(session, name))
    click.echo(f"paused campaign {name!r}")


@main.command()
@click.argument("name", required=False)
@click.option("--sender", is_flag=False, flag_value="", default=None, metavar="[PHONE_NUMBER_ID]",
              help="Resume every campaign the engine paused for an error of this sender (token, permission, "
                   "account, payment), once fixed; default WA_PHONE_NUMBER_ID.")
@pass_app
@handle_errors
def resume(app: AppContext, name: str | None, sender: str | None) -> None:
    """Continue a paused campaign where it stopped (a worker sends it)."""
    if (name is None) == (sender is None):
        raise click.UsageError("give NAME or --sender")
    if sender is not None:
        default = app.settings.phone_number_id
        with app.database().session() as session:
            resumed = campaigns.resume_sender(session, sender or default, default)
        click.echo(f"resumed {len(resumed)} campaign{'s' if len(resumed) != 1 else ''}"
                   + (f": {', '.join(resumed)}" if resumed else "") + "; `campaign worker` sends them")
        return
    with app.database().session() as session:
        campaigns.resume(session, campaigns.get(session, name))
    click.echo(f"resumed campaign {name!r}; `campaign worker` (or `campaign launch {name}`) sends it")


@main.command()
@click.argument("name")
@click.option("--error", "codes", multiple=True, type=int, metavar="CODE", help="Only messages that failed with CODE (repeat).")
@pass_app
@handle_errors
def retry(app: AppContext, name: str, codes: tuple[int, ...]) -> None:
    """Put campaign NAME's failed messages back in the queue (never one Meta accepted)."""
    with app.database().session() as session:
        campaign = campaigns.get(session, name)
        count = campaigns.retry_failed(session, campaign, codes)
        state = campaign.state
    click.echo(f"{count} failed message{'s' if count != 1 else ''} of campaign {name!r} queued again"
               + (f"; it is {state}: `campaign resume {name}` or a worker sends them" if count and state != "running" else ""))


@main.command()
@click.argument("name")
@pass_app
@handle_errors
def cancel(app: AppContext, name: str) -> None:
    """End campaign NAME: its queued messages are cancelled."""
    with app.database().session() as session:
        cancelled = campaigns.cancel(session, campaigns.get(session, name))
    click.echo(f"cancelled campaign {name!r} ({cancelled} queued messages cancelled)")


@main.command()
@click.option("--campaign", "names", multiple=True, metavar="NAME", help="Only these campaigns (default: all running).")
@click.option("--exit-when-idle", is_flag=True, help="Exit 0 once no running or scheduled campaign has work left.")
@pass_app
@handle_errors
def worker(app: AppContext, names: tuple[str, ...], exit_when_idle: bool) -> None:
    """The dispatcher: send every running campaign (any number of workers may run)."""
    stats = sending.run_worker(app.database(), app.settings, campaigns_=list(names) or None,
                               exit_when_idle=exit_when_idle, handle_signals=True).stats
    click.echo(f"worker stopped: sent {stats.sent}, failed {stats.failed}, retried {stats.retried}", err=True)


@main.command("test")
@click.argument("name")
@click.option("--to", "numbers", multiple=True, required=True, metavar="PHONE", help="A number to send to (repeat).")
@click.option("--default-region", metavar="CC", help="Region for numbers without a country code.")
@pass_app
@handle_errors
def test_send(app: AppContext, name: str, numbers: tuple[str, ...], default_region: str | None) -> None:
    """Send campaign NAME's template to a few numbers now; not counted in the campaign."""
    results = sending.send_test(app.database(), app.settings, name, numbers, default_region)
    for result in results:
        click.echo(f"{result.phone}: " + (f"accepted {result.wamid}" if result.wamid else f"failed: {result.error}"))
    if any(r.error for r in results):
        sys.exit(1)


# -- sandbox -----------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8555, show_default=True, type=int)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="JSON or TOML sandbox settings.")
@click.option("--webhook-url", help="Where to POST signed status and inbound webhooks.")
@click.option("--mps", type=int, help="Throughput per sender number before 130429 (default 80).")
@click.option("--pair-interval", type=float, help="Seconds between two messages to one user before 131056 (default 6).")
@click.option("--latency-ms", help='Answer delay, e.g. "150-250" or "0" (default 150-250).')
@click.option("--transient-rate", type=float, help="Share of sends failing with 500/131000 or 503/2 (default 0).")
@click.option("--seed", type=int, help="Make latency, faults and webhook fates repeatable.")
@handle_errors
def sandbox(host: str, port: int, config_file: str | None, webhook_url: str | None, mps: int | None,
            pair_interval: float | None, latency_ms: str | None, transient_rate: float | None, seed: int | None) -> None:
    """A local emulator of the WhatsApp Cloud API and its webhooks (point WA_API_BASE_URL at it)."""
    from campaign.sandbox.config import SandboxConfig, parse_latency
    from campaign.sandbox.server import serve

    try:
        config = SandboxConfig.from_options(
            config_file, webhook_url=webhook_url, mps=mps, pair_interval=pair_interval,
            latency_ms=parse_latency(latency_ms) if latency_ms is not None else None,
            transient_rate=transient_rate, seed=seed,
        )
    except (ValueError, TypeError, OSError) as exc:
        raise CampaignError(f"sandbox settings: {exc}") from None
    logging.getLogger("campaign.sandbox").setLevel(logging.INFO)
    click.echo(f"sandbox: set WA_API_BASE_URL=http://{host}:{port} (Ctrl-C stops it)", err=True)
    serve(config, host, port)


# -- webhooks ----------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@pass_app
@handle_errors
def webhooks(app: AppContext, host: str, port: int) -> None:
    """The webhook receiver (/webhook) and the reconciler that applies what it stores."""
    from campaign.webhooks import serve

    serve(app.settings, host, port)  # uvicorn says where it listens; Meta needs it behind HTTPS


@main.command()
@click.option("--replay", is_flag=True, help="Rebuild message states from every stored event.")
@pass_app
@handle_errors
def reconcile(app: AppContext, replay: bool) -> None:
    """Apply stored webhook events once."""
    from campaign import reconcile as reconciler

    database = app.database()
    options = {"marketing_retries": app.settings.marketing_retries,
               "marketing_retry_after": app.settings.marketing_retry_after,
               "default_sender": app.settings.phone_number_id}
    stats = reconciler.replay(database, **options) if replay else reconciler.reconcile_once(database, **options)
    click.echo(
        f"events {stats.events}, statuses applied {stats.statuses_applied}, inbound {stats.inbound}, "
        f"waiting for their message {stats.pending}, orphaned {stats.orphaned}, malformed {stats.errors}"
        + (f", from unknown user ids {stats.unmatched} (kept)" if stats.unmatched else "")
    )


# -- reports -----------------------------------------------------------------------------------


@main.command()
@click.argument("name")
@click.option("--status", "statuses", metavar="STATES", help="Only these states, comma-separated (e.g. delivered,read,failed).")
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx", "parquet", "json"]), help="Default: from -o's suffix, else csv.")
@click.option("-o", "--output", metavar="PATH", help="Where to write (default NAME-report.FORMAT; - for stdout).")
@click.option("--summary", "show_summary", is_flag=True, help="Print the campaign's summary instead of the per-recipient report.")
@click.option("--json", "as_json", is_flag=True, help="With --summary: print it as JSON.")
@click.option("--chart", metavar="PATH.png", help="Also draw the delivery funnel and the timeline to this PNG.")
@pass_app
@handle_errors
def report(app: AppContext, name: str, statuses: str | None, fmt: str | None, output: str | None,
           show_summary: bool, as_json: bool, chart: str | None) -> None:
    """Per-recipient delivery report of campaign NAME, or its summary."""
    from campaign import export, render, summary
    from campaign.chart import write_chart

    database = app.database()
    if show_summary:
        figures = summary.summary(database, name)
        click.echo(json.dumps(figures.as_dict()) if as_json else render.format_summary(figures))
    else:
        fmt = fmt or (export.format_for_path(output) if output and output != "-" else "csv")
        target: Any = sys.stdout.buffer if output == "-" else (output or export.default_path(name, fmt))
        result = export.write_report(database, name, target, statuses=export.parse_statuses(statuses), fmt=fmt)
        if output != "-":
            click.echo(f"wrote {result.rows} rows to {result.path}", err=True)
    if chart:
        click.echo(f"chart: {write_chart(database, name, chart)}", err=True)


# -- demo --------------------------------------------------------------------------------------


@main.command()
@click.option("--folder", type=click.Path(file_okay=False), help="Where to put the database, report and chart (default: a new temporary folder).")
@handle_errors
def demo(folder: str | None) -> None:
    """The whole job on the embedded default: SQLite, the sandbox as Meta, webhooks, a report."""
    from campaign import demo as demo_run
    from campaign import render

    live = _demo_progress()
    try:
        result = demo_run.run(Path(folder) if folder else None, on_progress=live.update)
    finally:
        live.close()
    click.echo(f"imported {result.imported.imported} recipients ({result.imported.rejected} rejected) from the sample file")
    click.echo(render.format_summary(result.summary))
    click.echo(f"\nreport: {result.report}\nchart:  {result.chart}\ndatabase: {result.folder / 'campaign.db'}")


class _demo_progress:  # noqa: N801 - used like a function
    """A live line of counts per state on a terminal; silent in a pipe."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        if stderr.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                                console=stderr, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("demo", total=None, detail="")

    def update(self, phase: str, counts: dict[str, int]) -> None:
        if self.bar is None:
            return
        total = sum(counts.values())
        settled = total - counts.get("queued", 0) - counts.get("sending", 0)
        detail = "  ".join(f"{state} {n}" for state, n in counts.items() if n)
        self.bar.update(self.task, description=phase, total=total, completed=settled, detail=detail)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
