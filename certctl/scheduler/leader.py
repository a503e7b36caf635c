"""The leader lock: one lease row per loop name in `scheduler_leases`, so each loop runs on one server.

`acquire(name)` is one atomic insert-or-renew-or-steal-if-expired statement (see
`certctl.store.leases_repo`); it runs at every tick of a leader-only loop, and a keeper renews every held
lease each third of the lease length in between, so a loop with a long interval keeps its lease. A server
that dies stops renewing: another takes the lease at its first tick after the lease has expired. A
server that shuts down releases its leases, and another takes them at its next tick. Times come from
the injected clock; servers sharing a database are expected to keep their clocks in step to well under
the lease length (NTP).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from certctl.domain.clock import Clock
from certctl.store import leases_repo
from certctl.store.database import Database

log = logging.getLogger("certctl.scheduler")


class LeaderLock:
    def __init__(self, db: Database, clock: Clock, holder: str, ttl: timedelta) -> None:
        self.db = db
        self.clock = clock
        self.holder = holder
        self.ttl = ttl
        self._held: dict[str, datetime] = {}  # name -> until when we know it is ours

    def holds(self, name: str) -> bool:
        until = self._held.get(name)
        return until is not None and self.clock.now() < until

    @property
    def held(self) -> list[str]:
        return sorted(name for name in self._held if self.holds(name))

    async def acquire(self, name: str) -> bool:
        """Take, renew, or (once expired) steal the lease of `name`; True when this holder has it now."""
        now = self.clock.now()
        until = now + self.ttl
        async with self.db.transaction() as conn:
            taken = await leases_repo.try_acquire(conn, name, self.holder, now=now, until=until)
        if taken:
            if name not in self._held:
                log.info("scheduler lease taken", extra={"loop": name, "holder": self.holder})
            self._held[name] = until
        elif self._held.pop(name, None) is not None:
            log.warning("scheduler lease lost", extra={"loop": name, "holder": self.holder})
        return taken

    async def renew_all(self) -> list[str]:
        """Extend every lease still held; forget the ones that were lost. Returns the names held."""
        if not self._held:
            return []
        now = self.clock.now()
        until = now + self.ttl
        async with self.db.transaction() as conn:
            kept = await leases_repo.renew(conn, list(self._held), self.holder, now=now, until=until)
        for name in set(self._held) - set(kept):
            log.warning("scheduler lease lost", extra={"loop": name, "holder": self.holder})
            del self._held[name]
        for name in kept:
            self._held[name] = until
        return kept

    async def release_all(self) -> None:
        names = list(self._held)
        self._held.clear()
        if names:
            # Logged before the release: from this line on, another server may take these leases.
            log.info("scheduler releasing leases", extra={"loops": names, "holder": self.holder})
            async with self.db.transaction() as conn:
                await leases_repo.release(conn, names, self.holder)
