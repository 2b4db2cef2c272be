"""The dispatcher: drains the outbox of running campaigns under Meta's limits, at most once.

One worker is one asyncio loop. Per sender number it reserves evenly spaced send slots in
the database, in its own lane: every live worker paces an equal share of the sender's rate,
so any number of workers together pace at the cap and none has to keep the pace of all of
them (pyrate-limiter's sliding window alone admits a burst and then waits, leaving 10-20%
of the cap unused). pyrate-limiter windows stay as the hard guard, one shared by the
workers and one per process. Messages are marked in flight in the database *before* their
requests leave, in small groups just ahead of their slots (MARK_GROUP_SECONDS): a worker
killed mid-block leaves only about two groups in doubt, and the rest of its claim returns to
the queue when the lease expires. Results are recorded in batches. Database calls run on
their own threads so SQLite lock waits never stall the sends.

What happens to each outcome is the error table's decision (`campaign.errors`); what may be
sent at all is the send policy's (`campaign.policy`); the statements are the outbox's
(`campaign.outbox`) and the lanes' (`campaign.lanes`). Time comes from the injected clock
(`campaign.clock`): on a fake one, leases, retries and windows move when a test says so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

from campaign import campaigns, errors, health, media, payloads, policy, statuses
from campaign.campaigns import RunningCampaign
from campaign.clock import SYSTEM, Clock
from campaign.config import Settings
from campaign.db import Database, database_unavailable, one_line
from campaign.exceptions import CampaignError
from campaign.graph import Accepted, GraphClient, GraphError, NotSent, ServerError, Uncertain
from campaign.lanes import SendLanes
from campaign.limits import LocalGuard, guard_for
from campaign.outbox import GRACE, Claimed, Outbox, Results

log = logging.getLogger(__name__)
T = TypeVar("T")

PACE = 0.97
"""Fraction of the cap the slots are spaced at. The headroom absorbs what pacing cannot
control: sends a worker makes up to LATE_TOLERANCE late, arrival jitter between the client
and Meta, and the inbound messages Meta counts against the same throughput. (Measured: with
three workers at 1,000 MPS on two fully busy cores, the sandbox process, descheduled for a
few tens of milliseconds, stamped up to 1,020 arrivals into one second paced at 970.)"""
GUARD_HEADROOM = 0.99
SLOT_BLOCK_SECONDS = 0.2
SLOT_LEAD = 0.05
LATE_TOLERANCE = 0.01
"""A worker more than this many seconds late for its slots gives them up and reserves new
ones: late sends spill at most a hundredth of the rate into the next second, inside PACE's
headroom."""
LATENCY_BUDGET = 1.0
"""Seconds of requests the connections are sized for: cap x this requests in flight. A
request that has to wait for a connection leaves late, and late requests bunch."""
MIN_CONNECTIONS = 20
OFFLINE_BACKOFF = (1.0, 10.0)
"""Seconds a sender's sends wait after a request that could not connect (first, most): the
wait doubles while the Graph API stays unreachable, and one block probes it after each."""
MARK_GROUP_SECONDS = 0.05
"""Messages are marked in flight in groups of about this many seconds of a worker's sends,
the next group while the current one goes out. Smaller groups leave fewer messages in doubt
after a crash (each waits CAMPAIGN_SEND_GRACE, though most never left) for more commits:
at 1,000 MPS, 20 small transactions a second per worker."""


@dataclass(frozen=True)
class DispatchConfig:
    mps: int = 80
    mps_explicit: bool = True
    """`mps` was set (CAMPAIGN_MPS, an option): it wins over a sender's throughput from Meta."""
    pair_interval: float = 6.0
    daily_unique_limit: int | None = None
    default_sender: str | None = None
    poll_interval: float = 0.25
    """How often campaign states are re-read: a pause takes effect within about this."""
    claim_seconds: float = 1.0
    """Each claim takes about this many seconds of sending."""
    lease: timedelta = timedelta(seconds=30)
    grace: timedelta = GRACE
    server_error_grace: timedelta = timedelta(seconds=60)
    recover_every: float = 5.0
    retry_base: float = 2.0
    """Seconds before the first retry of a transient error; it doubles with each attempt."""
    marketing_retry_after: float = 86400.0
    marketing_retries: int = 3
    unreachable_days: float = 30.0
    marketing_frequency: policy.MarketingFrequency | None = None
    """CAMPAIGN_MARKETING_FREQUENCY: the claim skips a marketing template past it (outbox._decide)."""
    shared_guard: bool = True
    """Whether the cap's hard guard is shared with other workers (see `campaign.limits`)."""
    redis_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> DispatchConfig:
        return cls(**{"mps": settings.mps, "pair_interval": settings.pair_interval, "redis_url": settings.redis_url,
                      "daily_unique_limit": settings.daily_unique_limit, "default_sender": settings.phone_number_id,
                      "lease": timedelta(seconds=settings.lease), "grace": timedelta(seconds=settings.send_grace),
                      "server_error_grace": timedelta(seconds=settings.server_error_grace),
                      "mps_explicit": settings.is_explicit("mps") or "mps" in overrides,
                      "marketing_retry_after": settings.marketing_retry_after,
                      "marketing_retries": settings.marketing_retries, "unreachable_days": settings.unreachable_days,
                      "marketing_frequency": settings.marketing_frequency,
                      **overrides})


@dataclass
class DispatchStats:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    throttled: int = 0
    in_doubt: int = 0
    started: float = field(default_factory=time.monotonic)
    paused: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.sent / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class _Block:
    """Messages marked in flight, with the slots reserved for them."""

    messages: list[Claimed]
    start: float
    rate: float
    cap: float
    """The sender's cap when the block was prepared: what the per-send guard holds to."""
    group: int
    """Messages marked in flight at a time (MARK_GROUP_SECONDS of this worker's sends)."""


class Dispatcher:
    """One worker. `run()` until stopped, or until idle with `exit_when_idle`."""

    def __init__(
        self,
        db: Database,
        client_factory: Callable[[int], GraphClient],
        config: DispatchConfig,
        *,
        worker_id: str | None = None,
        on_progress: Callable[[DispatchStats], None] | None = None,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.db = db
        self.config = config
        self.client_factory = client_factory
        self.clock = clock
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self) & 0xFFFF:x}"
        self.outbox = Outbox(db, self.worker_id, lease=config.lease, grace=config.grace)
        self.lanes = SendLanes(db, self.worker_id)
        self.on_progress = on_progress
        self.rng = rng or random.Random()
        self.stats = DispatchStats()
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="campaign-db")
        self._slots_thread = ThreadPoolExecutor(1, thread_name_prefix="campaign-slots")
        """The send path's own (small, quick) transactions: never queued behind a claim or a flush."""
        self._campaigns: dict[int, RunningCampaign] = {}
        self._sender_limits: dict[str, health.SenderLimits] = {}
        """What Meta said of each sender (throughput, messaging limit), read with the campaigns."""
        self._queues: dict[str, deque[Claimed]] = {}
        self._carry: dict[str, deque[Claimed]] = {}
        """Marked in flight, but their block's slots were missed: first in the next block."""
        self._share: dict[str, float] = {}
        """This worker's share of each sender's rate, as its last reservation found it."""
        self._offline: dict[str, tuple[float, float]] = {}
        """Sender -> (no sends before this clock time, the wait that set it): the Graph API
        could not be reached (a network drop): the messages go back unspent, nothing fails."""
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._local_guard = LocalGuard(max(1, math.floor(config.mps * GUARD_HEADROOM)))
        """Per send, in this process: no catch-up after a stall passes the cap (a message
        below it: requests leave the client a few milliseconds apart from where they were
        admitted, and the sandbox, like Meta, counts arrivals)."""
        self._shared_guard = guard_for(db.engine.url.render_as_string(hide_password=False), config.mps,
                                       shared=config.shared_guard, redis_url=config.redis_url)
        """Per block of slots, across every worker of the database."""
        self._client: GraphClient | None = None
        self._results = Results()
        self._held: set[int] = set()
        """Taken from the queue into a block, not yet handed to a request: returned to the
        queue on shutdown."""
        self._marked: set[int] = set()
        """The held messages already marked in flight."""
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    # -- the main loop -----------------------------------------------------------------------

    async def run(self, *, campaigns: Sequence[str] | None = None, exit_when_idle: bool = False,
                  stop: asyncio.Event | None = None) -> DispatchStats:
        names = list(campaigns) if campaigns else None
        self._client = self.client_factory(max(MIN_CONNECTIONS, math.ceil(self.config.mps * LATENCY_BUDGET)))
        last_recover: float | None = None
        try:
            try:
                while not self._stop.is_set() and not (stop is not None and stop.is_set()):
                    dead = {sender: task for sender, task in self._senders.items() if _died_of_error(task)}
                    if dead:
                        # A send loop died (the cap's shared guard lost its database connection,
                        # say): the blocks it held died with it. `_refresh` starts it again; what
                        # it held but never handed to a request is given back first (`_held`
                        # keeps a message only until its request is created), else the worker
                        # is never idle and those messages wait for their lease or grace.
                        for sender, task in dead.items():
                            log.error("the send loop of %s stopped (%r); starting it again", sender, task.exception(),
                                      exc_info=task.exception())
                        alive = [task for task in self._senders.values() if not task.done()]
                        for task in alive:  # their blocks cannot be told apart from the dead one's
                            task.cancel()
                        await asyncio.gather(*alive, return_exceptions=True)
                        waiting = {m.id for queue in (*self._queues.values(), *self._carry.values()) for m in queue}
                        await self._give_back([mid for mid in self._held if mid not in waiting])
                        for sender in dead:
                            del self._senders[sender]  # now `_refresh` may start it again
                    now = self.clock.now()
                    if last_recover is None or self.clock.time() - last_recover >= self.config.recover_every:
                        await self._recover(now)
                        last_recover = self.clock.time()
                        now = self.clock.now()  # recovery may have waited out a database outage
                    await self._refresh(names, now)
                    await self._claim(self.clock.now())  # the lease counts from the claim itself
                    await self._flush()
                    if self.on_progress is not None:
                        self.on_progress(self.stats)
                    if exit_when_idle and self._idle() and not await self._db(self.outbox.has_pending_work, names):
                        self.stats.completed += await self._db(self._complete_finished, self.clock.now())
                        break
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.config.poll_interval)
                    except TimeoutError:
                        pass
                    self._wake.clear()
            except Exception as exc:
                # A database call waits for an outage to end (_db); it gives up only when the
                # worker is stopping: then shut down as far as the database allows.
                if not (self._stop.is_set() and database_unavailable(exc)):
                    raise
                log.error("stopping while the database is unavailable (%s)", one_line(exc))
        finally:
            await self._shutdown()
        return self.stats

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _idle(self) -> bool:
        return (not self._in_flight and not any(self._queues.values()) and not any(self._carry.values())
                and not self._held and not len(self._results))

    async def _db(self, fn: Callable[..., T], *args: Any, executor: ThreadPoolExecutor | None = None) -> T:
        """`fn(*args)` on the worker's database thread (or `executor`).

        While the database is unavailable (down, restarting, its connections dropped:
        `db.database_unavailable`) the call waits, pinging with backoff, and is made again
        once the database answers; so the whole worker waits and goes on by itself. Nothing
        is given up meanwhile: results stay in memory (`_flush`), and the send path stops at
        its next in-flight mark, because no message is sent before its mark has committed.
        The arguments of a call made again that are instants (a datetime, or Unix seconds
        near the clock's) move on by the time waited: a lease, an in-doubt wait, a slot
        counts from when the statement really ran, not from before the outage.

        It raises when the worker is stopping and the call has waited 10 s or more, and when
        the database answers pings but the call keeps failing (a statement that fails on a
        healthy database is not an outage to wait out). The happy path costs one clock
        reading more than a bare `run_in_executor`."""
        loop = asyncio.get_running_loop()
        pool = executor or self._db_thread
        call_args = args
        called_at = self.clock.time()
        first_failure: float | None = None
        strikes = 0
        while True:
            try:
                result = await loop.run_in_executor(pool, fn, *call_args)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                if first_failure is None:
                    first_failure = time.monotonic()
                    log.warning("database unavailable (%s): %s waits for it and goes on", one_line(exc),
                                getattr(fn, "__name__", repr(fn)))
                if await loop.run_in_executor(pool, self.db.reachable):
                    strikes += 1
                    if strikes > 3:  # the database answers, the call still fails: not an outage
                        raise
                delay = 0.1
                while not await loop.run_in_executor(pool, self.db.reachable):
                    if self._stop.is_set() and time.monotonic() - first_failure > 10.0:
                        raise
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, 2.0)
                moved = self.clock.time() - called_at
                call_args = tuple(
                    arg + timedelta(seconds=moved) if isinstance(arg, datetime)
                    else arg + moved if isinstance(arg, float) and abs(arg - called_at) < 3600
                    else arg
                    for arg in args)
                continue
            if first_failure is not None:
                log.warning("database back after %.1fs: %s went on", time.monotonic() - first_failure,
                            getattr(fn, "__name__", repr(fn)))
            return result

    async def _db_now(self, fn: Callable[..., T], *args: Any) -> T:
        """The send path's own calls (slots, marks): on their thread, never queued behind a
        claim or a flush; they wait out an outage as `_db` does."""
        return await self._db(fn, *args, executor=self._slots_thread)

    async def _recover(self, now: datetime) -> None:
        # Results held through an outage are recorded first: recovery must not take a message
        # this worker sent, but could not yet record, for one whose request may never have left.
        await self._flush()
        never_left, expired = await self._db(self.outbox.recover, now)
        if never_left or expired:
            log.info("re-queued %d expired claims and %d in-doubt messages past the grace period", never_left, expired)
        self.stats.completed += await self._db(self._complete_finished, now)

    def _complete_finished(self, now: datetime) -> list[str]:
        with self.db.session() as session:
            return campaigns.complete_finished(session, now)

    def _running(self, names: list[str] | None, now: datetime) -> list[RunningCampaign]:
        with self.db.session() as session:
            self._sender_limits = health.sender_limits(session)
            return campaigns.running(session, names, now, self.config.default_sender)

    def _upload(self, campaign: RunningCampaign, now: datetime) -> str | None:
        """Upload the campaign's files that have no live upload (Meta forgets them after 30
        days); the reason it cannot, else None. The campaign is sent from the next poll on."""
        sender = self._sender(campaign)
        try:
            for path in campaign.missing_media:
                media.media_id(self.db, lambda: self.client_factory(2), sender, path, now)
        except CampaignError as exc:
            return f"{exc}; launch or resume it from a host that can read the file"
        return None

    def _pause(self, campaign_ids: list[int], reason: str, code: int | None, now: datetime) -> list[str]:
        with self.db.session() as session:
            return campaigns.engine_pause_all(session, campaign_ids, reason, code, now)

    def _pause_sender(self, sender: str, reason: str, code: int | None, now: datetime) -> list[str]:
        with self.db.session() as session:
            return campaigns.engine_pause_sender(session, sender, self.config.default_sender, reason, code, now)

    async def _refresh(self, names: list[str] | None, now: datetime) -> None:
        running = await self._db(self._running, names, now)
        senderless = [c for c in running if campaigns.sender_of(c.sender, self.config.default_sender) is None]
        if senderless:
            self.stats.paused += await self._db(self._pause, [c.id for c in senderless], campaigns.NO_SENDER, None, now)
            running = [c for c in running if c not in senderless]
        for campaign in [c for c in running if c.missing_media]:
            running.remove(campaign)
            if (reason := await self._db(self._upload, campaign, now)) is not None:
                self.stats.paused += await self._db(self._pause, [campaign.id], reason, None, now)
        self._campaigns = {c.id: c for c in running}
        stopped = []
        for queue in self._queues.values():
            keep = [m for m in queue if m.campaign_id in self._campaigns]
            stopped += [m.id for m in queue if m.campaign_id not in self._campaigns]
            queue.clear()
            queue.extend(keep)
        if stopped:
            await self._db(self.outbox.return_unsent, stopped, now)
        for sender in {self._sender(c) for c in running}:
            task = self._senders.get(sender)
            # A loop that died of an error is `run`'s to clear up first (it gives back what the
            # loop held): replaced here, before `run` saw it, the worker would never be idle.
            if task is None or (task.done() and not _died_of_error(task)):
                self._queues.setdefault(sender, deque())
                self._carry.setdefault(sender, deque())
                self._senders[sender] = asyncio.create_task(self._send_loop(sender), name=f"send {sender}")

    def _sender(self, campaign: RunningCampaign) -> str:
        return campaigns.require_sender(campaign.sender, self.config.default_sender)  # senderless ones were paused

    def _cap(self, sender: str) -> float:
        caps = [c.mps for c in self._campaigns.values() if c.mps and self._sender(c) == sender]
        meta = health.limits_for(self._sender_limits, sender).mps
        return float(min([self.config.mps if self.config.mps_explicit or not meta else meta, *caps]))

    def _rate(self, sender: str) -> float:
        """What this worker expects to send for `sender` a second: the size of its claims
        and blocks (claiming for the whole cap would leave other workers' leases idle)."""
        return min(self._share.get(sender, math.inf), self._cap(sender))

    async def _claim(self, now: datetime) -> None:
        for sender, queue in self._queues.items():
            rate = self._rate(sender)
            if len(queue) >= rate * self.config.claim_seconds / 2:
                continue
            owned = [c for c in self._campaigns.values() if self._sender(c) == sender]
            if not owned:
                continue
            queue.extend(await self._db(self._claim_sync, owned, int(rate * self.config.claim_seconds) + 1, now))

    def _claim_sync(self, owned: list[RunningCampaign], limit: int, now: datetime) -> list[Claimed]:
        return self.outbox.claim(owned, limit, now, pair_interval=self.config.pair_interval,
                                 unreachable_for=timedelta(days=self.config.unreachable_days),
                                 daily_unique_limit=self._daily_limit(owned),
                                 marketing_frequency=self.config.marketing_frequency)

    def _daily_limit(self, owned: list[RunningCampaign]) -> int | None:
        """CAMPAIGN_DAILY_UNIQUE_LIMIT, else the sender's messaging limit as Meta reported it."""
        if self.config.daily_unique_limit is not None or not owned:
            return self.config.daily_unique_limit
        return health.limits_for(self._sender_limits, self._sender(owned[0])).daily_limit

    # -- sending -----------------------------------------------------------------------------

    async def _send_loop(self, sender: str) -> None:
        """Send this sender's queue at its reserved slots; the next block is prepared (slots
        reserved, messages marked in flight) while the current one goes out, so the slots of
        consecutive blocks join without a gap."""
        upcoming: asyncio.Task[_Block | None] | None = None
        try:
            while not self._stop.is_set():
                block = await (upcoming or asyncio.create_task(self._prepare(sender)))
                upcoming = asyncio.create_task(self._prepare(sender))
                if block is None:
                    await asyncio.sleep(0.02)
                    continue
                slot = 0
                marks: dict[int, asyncio.Task[None]] = {}
                for position, message in enumerate(block.messages):
                    if await self._wait_if_offline(sender, block, position):
                        await asyncio.gather(*marks.values())
                        break
                    # This message's group is marked in flight before it leaves, the next
                    # group is marked meanwhile.
                    group = position // block.group
                    for ahead in (group, group + 1):
                        if ahead not in marks and ahead * block.group < len(block.messages):
                            marks[ahead] = asyncio.create_task(self._mark(block.messages[ahead * block.group:(ahead + 1) * block.group]))
                    await marks[group]
                    if message.id not in self._marked:  # the lease ran out: not ours to send
                        continue
                    if message.campaign_id not in self._campaigns:  # paused: it never left
                        await self._give_back([message.id])
                        continue
                    # A slot more than LATE_TOLERANCE in the past (a stall: the GIL, a slow
                    # database) is given up, not used: that second may belong to another
                    # worker now. When the block has no slot left, the rest of its messages
                    # (already marked in flight) get new slots in a coming block.
                    slot = max(slot, math.ceil((self.clock.time() - LATE_TOLERANCE - block.start) * block.rate))
                    if slot >= len(block.messages):
                        await asyncio.gather(*marks.values())
                        self._carry[sender].extend(m for m in block.messages[position:] if m.id in self._held)
                        break
                    # Never earlier than the slot. The schedule, not the clock after each
                    # sleep, sets the spacing: asyncio oversleeps by about a millisecond,
                    # and a send that overslept is followed at once by any slot now due.
                    due = block.start + slot / block.rate
                    slot += 1
                    if (delay := due - self.clock.time()) > 0:
                        await self.clock.sleep(delay)
                    if message.campaign_id not in self._campaigns:
                        await self._give_back([message.id])
                        continue
                    await self._local_guard.acquire(sender, cap=max(1, math.floor(block.cap * GUARD_HEADROOM)))
                    self._held.discard(message.id)
                    self._marked.discard(message.id)
                    task = asyncio.create_task(self._send_one(sender, message))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
        finally:
            if upcoming is not None:
                upcoming.cancel()
                await asyncio.gather(upcoming, return_exceptions=True)

    def _go_offline(self, sender: str, exc: Exception) -> None:
        now = self.clock.time()
        until, wait = self._offline.get(sender, (0.0, 0.0))
        if until > now:
            return  # the wait is already on: other requests of the same block failed alike
        wait = min(OFFLINE_BACKOFF[1], max(OFFLINE_BACKOFF[0], wait * 2))
        self._offline[sender] = (now + wait, wait)
        log.warning("sender %s: the Graph API cannot be reached (%s); sending again in %.0f s", sender, exc, wait)

    async def _wait_if_offline(self, sender: str, block: _Block, position: int) -> bool:
        """While the Graph API is unreachable: the block's unsent messages go back to the queue
        (unspent) and the sender waits. True if it did (the block is over)."""
        until = self._offline.get(sender, (0.0, 0.0))[0]
        if until <= self.clock.time():
            return False
        await self._give_back([m.id for m in block.messages[position:] if m.id in self._held])
        await self.clock.sleep(until - self.clock.time())
        return True

    async def _prepare(self, sender: str) -> _Block | None:
        """The next block: messages carried over from a late block first, then new ones from
        the queue; slots reserved for all of them. Its first group is marked in flight now
        (`_mark`), so its first slot is never late for it."""
        queue, carried = self._queues[sender], self._carry[sender]
        cap = self._cap(sender)
        # Rounded up: the shared guard counts a whole block when it is reserved, so blocks
        # must carry this worker's rate in 1/SLOT_BLOCK_SECONDS acquisitions a second (at
        # 80 MPS, blocks of 15 would fit the guard's second only five times: 75 MPS).
        size = math.ceil(self._rate(sender) * SLOT_BLOCK_SECONDS)
        ready = [carried.popleft() for _ in range(min(len(carried), size))]
        stopped = [m.id for m in ready if m.campaign_id not in self._campaigns]
        await self._give_back(stopped)
        ready = [m for m in ready if m.campaign_id in self._campaigns]
        fresh = await self._still_running([queue.popleft() for _ in range(min(len(queue), size - len(ready)))])
        if not ready and not fresh:
            return None
        await self._shared_guard.acquire(sender, len(ready) + len(fresh), cap=math.floor(cap))
        # Slots start a little ahead, so marking the block in flight never makes them late.
        start, rate = await self._db_now(self.lanes.reserve, sender, len(ready) + len(fresh), cap * PACE,
                                         self.clock.time() + SLOT_LEAD)
        self._share[sender] = rate
        self._held.update(m.id for m in fresh)
        block = _Block(ready + fresh, start, rate, cap, group=max(1, math.ceil(rate * MARK_GROUP_SECONDS)))
        await self._mark(block.messages[:block.group])
        return block

    async def _mark(self, messages: list[Claimed]) -> None:
        """Mark in flight those of `messages` not marked yet. One whose lease ran out while it
        waited (recovery may have handed it to another worker) is dropped, never sent."""
        ids = [m.id for m in messages if m.id in self._held and m.id not in self._marked]
        if not ids:
            return
        marked = await self._db_now(self.outbox.mark_in_flight, ids, self.clock.now())
        self._marked.update(marked & self._held)
        if lost := set(ids) - marked:
            self._held.difference_update(lost)
            log.warning("%d claimed messages were no longer ours (lease expired): not sent by this worker", len(lost))

    async def _give_back(self, ids: list[int]) -> None:
        """Held messages that will not be sent: queued again (outbox.return_unsent)."""
        if ids:
            self._held.difference_update(ids)
            self._marked.difference_update(ids)
            await self._db(self.outbox.return_unsent, ids, self.clock.now())

    async def _still_running(self, block: list[Claimed]) -> list[Claimed]:
        gone = [m.id for m in block if m.campaign_id not in self._campaigns]
        if gone:
            await self._db(self.outbox.return_unsent, gone, self.clock.now())
        return [m for m in block if m.campaign_id in self._campaigns]

    async def _send_one(self, sender: str, message: Claimed) -> None:
        campaign = self._campaigns.get(message.campaign_id)
        if campaign is None:  # paused between the slot and now: the request never left
            self._results.released.append(message.id)
            return
        assert self._client is not None
        try:
            accepted = await self._client.send_message(sender, self._payload(campaign, message))
        except GraphError as error:
            await self._failed(sender, campaign, message, error)
        except Uncertain as exc:
            answered = isinstance(exc, ServerError)  # Meta answered: its `sent` status would be quick
            wait = self.config.server_error_grace if answered else self.config.grace
            log.warning("message %d: outcome unknown (%s); waiting up to %ds for its status webhook",
                        message.id, exc, wait.total_seconds())
            self.stats.in_doubt += 1
            now = self.clock.now()
            self._results.add_in_doubt(message.id, message.contact_id, now, now + wait, self.config.pair_interval)
        except NotSent as exc:
            # The request never left: the message goes back with its attempt, and the sender's
            # sends wait (a network drop would otherwise spend every attempt of the queue).
            self._results.unsent[message.id] = self.clock.now()
            self._go_offline(sender, exc)
        else:
            self._offline.pop(sender, None)
            self._sent(message, accepted)
        if len(self._results) >= 200:
            self._wake.set()

    def _payload(self, campaign: RunningCampaign, message: Claimed) -> dict[str, Any]:
        callback = statuses.callback_data(message.id)
        # The number when known (Meta: `to` wins over `recipient`), else the BSUID.
        address = message.phone or message.user_id or ""
        if message.choice is policy.Choice.TEXT:
            return payloads.text_payload(campaign.spec, address, message.params, callback)
        return payloads.template_payload(campaign.spec, address, message.params, callback, message.id)

    def _sent(self, message: Claimed, accepted: Accepted) -> None:
        self.stats.sent += 1
        self._results.add_sent(message.id, message.contact_id, accepted.wamid, accepted.wa_id, self.clock.now(),
                               self.config.pair_interval)

    async def _failed(self, sender: str, campaign: RunningCampaign, message: Claimed, error: GraphError) -> None:
        rule = errors.rule_for(error.code, error.http_status)
        await self._apply(sender, campaign, message, rule, error.code, error.message, error.details, error=error)

    async def _apply(self, sender: str, campaign: RunningCampaign, message: Claimed, rule: errors.ErrorRule,
                     code: int | None, title: str, details: str | None, *, error: GraphError | None = None) -> None:
        """Do what the error table says an error answered to this send does."""
        what = errors.consequence(rule, source=errors.Source.SEND, attempts=message.attempts + 1,
                                  pair_hits=message.pair_hits, rng=self.rng, retry_base=self.config.retry_base,
                                  marketing_waits=message.marketing_waits, marketing_retries=self.config.marketing_retries,
                                  marketing_retry_after=self.config.marketing_retry_after)
        now = self.clock.now()
        if what.slow_sender:
            self.stats.throttled += 1
            await self._db(self.lanes.slow_down, sender, self._cap(sender), self.clock.time())
        if what.fate is errors.Fate.RETRY:
            self.stats.retried += 1
            self._results.add_retry(message.id, message.contact_id, now + timedelta(seconds=what.retry_after),
                                    pair_hit=what.pair_hit, marketing_wait=what.marketing_wait, code=code, title=title)
        elif what.fate is errors.Fate.HOLD:
            self._results.add_retry(message.id, message.contact_id, now, code=code, title=title)
        else:
            if what.gave_up and rule.action is errors.Action.RETRY:
                title = f"{title} (gave up after {message.attempts + 1} attempts)"
            self.stats.failed += 1
            self._results.add_failed(message.id, message.contact_id, code, title, details, now)
        if what.unreachable:
            self._results.unreachable[message.contact_id] = now
        if what.limit_marketing_for:
            self._results.marketing_limited[message.contact_id] = now + timedelta(seconds=what.limit_marketing_for)
        if what.suppress:
            for name in (message.phone, message.user_id):
                if name:
                    self._results.suppress[name] = (f"Meta error {code}: {rule.meaning}", what.suppress)
        if what.pause is not None:
            await self._pause_for(sender, campaign, what.pause, rule, code, error)

    async def _pause_for(self, sender: str, campaign: RunningCampaign, pause: errors.Pause, rule: errors.ErrorRule,
                         code: int | None, error: GraphError | None) -> None:
        reason = f"Meta error {code}: {rule.meaning} ({error}); {rule.advice}"
        if pause is errors.Pause.SENDER:
            # Every campaign of the sender in the database: other workers stop at their next poll.
            ids = [c.id for c in self._campaigns.values() if self._sender(c) == sender]
            paused = await self._db(self._pause_sender, sender, reason, code, self.clock.now())
        else:
            ids = [campaign.id]
            paused = await self._db(self._pause, ids, reason, code, self.clock.now())
        for name in paused:
            log.error("paused campaign %r: %s", name, reason)
        self.stats.paused += paused
        for campaign_id in ids:
            self._campaigns.pop(campaign_id, None)
        self._wake.set()

    # -- results and shutdown ----------------------------------------------------------------

    async def _flush(self) -> None:
        if not len(self._results):
            return
        results, self._results = self._results, Results()
        try:
            await self._db(self.outbox.record, results)
        except BaseException as exc:
            # Not recorded (the database stayed away while stopping, or the flush was
            # cancelled): the batch is kept, ahead of what came since, for the next flush.
            # Dropped, its sent messages would stay `sending` and go again after the grace.
            newer, self._results = self._results, results
            for item in fields(Results):
                kept, more = getattr(results, item.name), getattr(newer, item.name)
                if isinstance(kept, list):
                    kept.extend(more)
                else:
                    kept.update(more)
            if isinstance(exc, Exception):
                log.error("%d results could not be recorded (%s): their messages stay `sending` until their "
                          "status webhooks settle them", len(self._results), type(exc).__name__)
            raise

    async def _shutdown(self) -> None:
        self._stop.set()
        for task in self._senders.values():
            task.cancel()
        await asyncio.gather(*self._senders.values(), return_exceptions=True)
        if self._in_flight:  # requests already sent finish and are recorded
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        await self._flush()
        await self._give_back(list(self._held))
        unsent = [m.id for queue in self._queues.values() for m in queue]
        if unsent:
            await self._db(self.outbox.return_unsent, unsent, self.clock.now())
        for queue in self._queues.values():
            queue.clear()
        await self._db(self.lanes.release)  # after the results: a lane not released just expires
        if self._client is not None:
            await self._client.aclose()
        self._local_guard.close()
        self._shared_guard.close()
        self._db_thread.shutdown(wait=True)
        self._slots_thread.shutdown(wait=True)


def _died_of_error(task: asyncio.Task[Any]) -> bool:
    """A send loop that ended with an exception (neither cancelled nor returned)."""
    return task.done() and not task.cancelled() and task.exception() is not None
