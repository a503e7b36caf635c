"""The loop runner: one asyncio task per loop, a skip-if-running guard, a per-run timeout, a leader lease for
loops that must run on one server only, and a drain at shutdown.

A loop runs once at start (unless `run_at_start` is off), then every `interval` after the end of its
previous run. `run_once(name)` is the same step, callable directly (tests drive loops this way, with a
FakeClock in the services, instead of waiting). `stop()` lets runs in progress finish for up to
`drain_timeout` (the job processor claims no new batch once stopping), cancels what is left, and releases
the leases so another server takes over at its next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from certctl.scheduler.leader import LeaderLock

log = logging.getLogger("certctl.scheduler")


@dataclass(frozen=True)
class Loop:
    name: str
    interval: timedelta
    work: Callable[[], Awaitable[Any]]
    leader_only: bool = True  # False: runs on every server (the job processor: claims use SKIP LOCKED)
    run_at_start: bool = True
    timeout: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class RunResult:
    loop: str
    outcome: str  # "ran" | "skipped: running" | "skipped: not leader" | "timed out" | "failed" | "stopping"
    result: Any = None
    seconds: float = 0.0


class Scheduler:
    def __init__(
        self, loops: list[Loop], lock: LeaderLock, *, drain_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        self.loops: dict[str, Loop] = {}
        self.lock = lock
        self.drain_timeout = drain_timeout
        self._guards: dict[str, asyncio.Lock] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.add(*loops)

    def add(self, *loops: Loop) -> None:
        """Register loops (before `start`)."""
        for loop in loops:
            if loop.name in self.loops:
                raise ValueError(f"a loop named '{loop.name}' is already registered")
            self.loops[loop.name] = loop
            self._guards[loop.name] = asyncio.Lock()
            self._wakes[loop.name] = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run_loop(loop), name=f"certctl-{loop.name}")
                       for loop in self.loops.values()]
        self._tasks.append(asyncio.create_task(self._keep_leases(), name="certctl-scheduler-leases"))
        log.info("scheduler started", extra={"loops": sorted(self.loops), "holder": self.lock.holder})

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.drain_timeout.total_seconds())
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if pending:
                log.warning("scheduler loops cancelled at shutdown", extra={"loops": [t.get_name() for t in pending]})
            self._tasks = []
        try:
            await self.lock.release_all()
        except Exception:  # the leases then simply expire
            log.warning("could not release scheduler leases", exc_info=True)

    async def run_once(self, name: str) -> RunResult:
        """One run of a loop, with its guards: skip if running, leader lease, per-run timeout."""
        loop = self.loops[name]
        guard = self._guards[name]
        if guard.locked():
            return RunResult(name, "skipped: running")
        async with guard:
            started = time.monotonic()
            try:
                if loop.leader_only and not await self.lock.acquire(name):
                    return RunResult(name, "skipped: not leader")
                async with asyncio.timeout(loop.timeout.total_seconds()):
                    result = await loop.work()
            except TimeoutError:
                log.error("scheduler loop timed out", extra={"loop": name, "timeout_s": loop.timeout.total_seconds()})
                return RunResult(name, "timed out", seconds=time.monotonic() - started)
            except Exception:  # a failed run is logged; the loop goes on at its next tick
                log.exception("scheduler loop failed", extra={"loop": name})
                return RunResult(name, "failed", seconds=time.monotonic() - started)
            seconds = time.monotonic() - started
            log.debug("scheduler loop ran", extra={"loop": name, "seconds": round(seconds, 3)})
            return RunResult(name, "ran", result, seconds)

    def wake(self, name: str) -> None:
        """Run a loop now rather than at its next tick (new work was just queued in this process)."""
        event = self._wakes.get(name)
        if event is not None:
            event.set()

    async def _run_loop(self, loop: Loop) -> None:
        if loop.run_at_start:
            await self.run_once(loop.name)
        while not await self._sleep(loop.interval, self._wakes[loop.name]):
            await self.run_once(loop.name)

    async def _sleep(self, interval: timedelta, wake: asyncio.Event | None = None) -> bool:
        """Wait for the interval (or a wake-up); True when the scheduler is stopping instead."""
        waits = [asyncio.ensure_future(self._stop.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=interval.total_seconds(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if wake is not None:
            wake.clear()
        return self._stop.is_set()

    async def _keep_leases(self) -> None:
        while not await self._sleep(self.lock.ttl / 3):
            try:
                await self.lock.renew_all()
            except Exception:  # the database is away: leases run out and are taken again later
                log.warning("could not renew scheduler leases", exc_info=True)
