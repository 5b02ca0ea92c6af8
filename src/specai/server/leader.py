"""The singleton jobs of a service (retention pruning, stale-member eviction, the graph sync coordinator) run in
exactly one of the processes sharing its database: the one holding the lease, and only while it holds it.

`Leadership` claims the lease every `ttl/3` (each attempt bounded by `ttl/3`), starts every job when a tenure
begins and cancels them all at once when it ends: on a failed or refused renewal, on any database error, on a
renewal that had to start a new tenure, or when a job's fence found the lease gone. A leader that stops hearing
from the database therefore stops its jobs within `2/3 ttl` of its last renewal, before the lease can expire and
another process take over; writes the jobs make are fenced besides (see store.lease). A process that is not
leading waits for the lease to expire (it reads when from the row) or to be released (`wake`), so failover
after its holder dies takes at most `ttl`, and a clean stop hands over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from specai.store.lease import Lease, LostLeadershipError, Term

# A singleton job: runs until cancelled (or returns early), fencing its writes with the tenure it is given.
Job = Callable[[Term], Awaitable[None]]

EXPIRY_SLACK_SECS = 0.02  # try this long after the holder's lease should have expired
STOP_JOBS_SECS = 2.0  # how long stepping down waits for cancelled jobs to finish
log = logging.getLogger("specai.server")


class Leadership:
    """Runs the jobs `add`ed while this process holds `lease` (see the module docstring); `run` until stopped."""

    def __init__(self, lease: Lease, *, stop_jobs_secs: float = STOP_JOBS_SECS) -> None:
        self.lease = lease
        self.every = lease.ttl / 3
        self.stop_jobs_secs = stop_jobs_secs
        self.terms = 0  # tenures begun by this process (for tests and diagnostics)
        self._jobs: dict[str, Job] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._term: Term | None = None
        self._valid_until = 0.0  # monotonic: the last confirmed claim's send time + ttl
        self._nudge = asyncio.Event()  # a release elsewhere, or a job's fence refused: look again now
        self._deposed: Term | None = None  # the tenure a job's fence refused
        self._failing = False

    @property
    def leading(self) -> bool:
        """True while this process holds the lease and runs the jobs."""
        return self._term is not None and time.monotonic() < self._valid_until

    @property
    def term(self) -> Term | None:
        """The current tenure, or None when not leading."""
        return self._term if self.leading else None

    def add(self, name: str, job: Job) -> None:
        """Run `job` in every tenure from now on (at once when leading); `name` is how logs call it."""
        self._jobs[name] = job
        if self._term is not None:
            self._start(name, job, self._term)

    def wake(self, _item: str | None = None) -> None:
        """Try to claim now (a listener subscriber: the lease was released)."""
        self._nudge.set()

    async def attempt(self) -> float:
        """Claim or renew once, starting or stopping the jobs to match; returns the seconds until the next try."""
        self._nudge.clear()
        if self._deposed is not None and self._deposed is self._term:
            await self.step_down("a job's fence found the lease taken or expired")
        self._deposed = None
        sent = time.monotonic()
        held = self._term
        try:
            async with asyncio.timeout(self.every):
                term = await self.lease.claim(held)
                holding = None if term is not None else await self.lease.state()
        except Exception as exc:
            why = _reason(exc)
            if held is not None:
                await self.step_down(f"the database did not confirm the lease: {why}")
            elif not self._failing:
                log.warning(
                    "cannot claim the singleton-jobs lease: %s; retrying every %.3g s", why, self.every
                )
            self._failing = True
            return self.every
        if self._failing and held is None:
            log.info("the singleton-jobs lease can be claimed again")
        self._failing = False
        if term is None:
            if held is not None:
                await self.step_down("another process holds the lease")
            if holding is None:
                return self.every
            return min(self.every, max(holding.expires_in, 0.0) + EXPIRY_SLACK_SECS)
        if held is not None and term.epoch != held.epoch:
            await self.step_down(f"its tenure had expired (the lease is now at epoch {term.epoch})")
        self._valid_until = sent + self.lease.ttl
        if self._term is None:
            self._begin(term)
        return max(0.0, self.every - (time.monotonic() - sent))

    async def run(self, stopping: asyncio.Event) -> None:
        """Claim, renew and run the jobs until `stopping` is set (or cancelled); then stop them and release."""
        try:
            while not stopping.is_set():
                pause = await self.attempt()
                await _first(stopping, self._nudge, pause)
        finally:
            await self.resign()

    async def step_down(self, why: str) -> None:
        """Stop leading now: cancel every job (waiting a little for them), log one line; no-op when not leading."""
        term, self._term, self._valid_until = self._term, None, 0.0
        if term is None:
            return
        tasks = list(self._running.values())
        self._running.clear()
        for task in tasks:
            task.cancel()
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.stop_jobs_secs)
        log.warning(
            "this process no longer leads (lease '%s', epoch %d): %s; singleton jobs stopped",
            self.lease.name,
            term.epoch,
            why,
        )
        for task in pending:
            log.warning("singleton job %s did not stop within %g s", task.get_name(), self.stop_jobs_secs)

    async def resign(self) -> None:
        """Stop the jobs and release the lease so another process takes over at once (at shutdown)."""
        term = self._term
        if term is None:
            return
        await self.step_down("this process is stopping")
        try:
            async with asyncio.timeout(self.every):
                await self.lease.release(term)
        except Exception as exc:
            log.warning("could not release the singleton-jobs lease (%s); it expires by itself", _reason(exc))

    def _begin(self, term: Term) -> None:
        self._term = term
        self.terms += 1
        log.info(
            "this process leads (lease '%s', epoch %d): running %s",
            self.lease.name,
            term.epoch,
            ", ".join(self._jobs) or "no jobs yet",
        )
        for name, job in self._jobs.items():
            self._start(name, job, term)

    def _start(self, name: str, job: Job, term: Term) -> None:
        self._running[name] = asyncio.create_task(self._guard(name, job, term), name=f"specai-leader-{name}")

    async def _guard(self, name: str, job: Job, term: Term) -> None:
        try:
            await job(term)
        except LostLeadershipError as exc:
            if self._term is term:
                log.warning("singleton job %s: %s", name, exc.message)
                self._deposed = term  # the loop steps down at once, then claims a new tenure if it can
                self._nudge.set()
        except Exception:
            log.exception("singleton job %s failed; it starts again with the next tenure", name)


async def _first(stopping: asyncio.Event, nudge: asyncio.Event, seconds: float) -> None:
    """Wait until `stopping` or `nudge` is set, or `seconds` have passed."""
    waits = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(nudge.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waits, return_exceptions=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
