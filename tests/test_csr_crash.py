"""Crash safety of agent CSR submissions on PostgreSQL: a real `certctl server --workers 2` is SIGKILLed while
agents' CSRs stream in (the one-statement write of services/issuance.py `_submit_csr_fast`), three times, and
restarted. After each kill and at the end the database must show nothing half-written: every version's job
Completed, at most one version per job, and for each Completed job exactly one version, one `csr_submitted` and
one `certificate_issued` audit row, one deployment job and its certificate Active; jobs not completed are still
AwaitingCSR, and their CSRs go through once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bench.common import _descendants
from bench.issuance import csrs_for, seed
from tests.conftest import _pg_admin, _pg_url, _run
from tests.test_crash_safety import _count, _psql
from tests.test_server_process import Server, _env

pytestmark = pytest.mark.slow

KEY = "csr-crash-admin-key-0123456789"
CERTS = 240
Query = Callable[[str], list[tuple[str, ...]]]


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"certctl_csr_crash_{uuid.uuid4().hex[:10]}"
    _run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_url(name)
    finally:
        _run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Submitter(threading.Thread):
    """Posts the CSRs over 8 keep-alive connections until they are all sent or the server goes away."""

    def __init__(self, server: Server, agent: str, bodies: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.queue = server.url, f"/api/v1/agents/{agent}/csr", list(bodies)
        self.statuses: dict[int, int] = {}

    def accepted(self) -> int:
        return self.statuses.get(202, 0)

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=self.url, verify=False, headers=headers, timeout=20) as client:
            async def worker() -> None:
                while self.queue:
                    body = self.queue.pop()
                    try:
                        response = await client.post(self.path, content=body)
                    except httpx.HTTPError:
                        return  # the server was killed
                    self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1

            await asyncio.gather(*(worker() for _ in range(8)))


def _consistent(query: Query, run: str) -> int:
    """Nothing half-written; returns how many CSRs are stored."""
    jobs = f"j.certificate_id LIKE 'mc-{run}-%' AND j.type = 'Renewal'"
    assert _count(query, f"SELECT count(*) FROM certificate_versions v JOIN jobs j ON j.id = v.job_id "
                         f"WHERE {jobs} AND j.status <> 'Completed'") == 0
    assert _count(query, "SELECT count(*) FROM (SELECT job_id FROM certificate_versions GROUP BY job_id "
                         "HAVING count(*) > 1) d") == 0
    assert _count(query, f"SELECT count(*) FROM jobs j WHERE {jobs} "
                         "AND j.status NOT IN ('Completed', 'AwaitingCSR')") == 0
    completed = _count(query, f"SELECT count(*) FROM jobs j WHERE {jobs} AND j.status = 'Completed'")
    for sql in (
        f"SELECT count(*) FROM jobs j JOIN certificate_versions v ON v.job_id = j.id WHERE {jobs}",
        f"SELECT count(*) FROM jobs j JOIN audit_events a ON a.resource_id = j.id AND a.action = 'csr_submitted' "
        f"WHERE {jobs}",
        f"SELECT count(*) FROM jobs j JOIN audit_events a ON a.resource_id = j.certificate_id "
        f"AND a.action = 'certificate_issued' WHERE {jobs}",
        f"SELECT count(*) FROM jobs j WHERE j.certificate_id LIKE 'mc-{run}-%' AND j.type = 'Deployment'",
        f"SELECT count(*) FROM managed_certificates WHERE id LIKE 'mc-{run}-%' AND status = 'Active'",
    ):
        assert _count(query, sql) == completed, sql
    return completed


def _kill(server: Server) -> None:
    """SIGKILL the server and, at the same moment, its worker processes (they outlive a killed supervisor)."""
    if server.proc is None:
        return
    for pid in [*_descendants(server.proc.pid), server.proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.proc.wait(timeout=30)
    server.proc = None


def _wait_for(submitter: Submitter, accepted: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while submitter.accepted() < accepted and submitter.is_alive():
        assert time.monotonic() < deadline, f"only {submitter.accepted()} CSRs accepted"
        time.sleep(0.01)


def test_sigkill_during_csr_submissions_postgresql(tmp_path: Path, pg_url: str) -> None:
    env = _env(CERTCTL_DATABASE_URL=pg_url, CERTCTL_API_KEYS_NAMED=f"admin:{KEY}:admin",
               CERTCTL_RATE_LIMIT_ENABLED="false", CERTCTL_LOG_LEVEL="warning", CERTCTL_DATABASE_MAX_CONNS="8")
    server = Server(tmp_path / "data", env, args=["--workers", "2"])
    query = _psql(pg_url)
    run = uuid.uuid4().hex[:6]
    try:
        server.start()  # migrations, seeds and the local CA's root
        agent, certs = asyncio.run(seed(pg_url, CERTS, run))
        bodies = csrs_for(certs)
        stored = 0
        for kill_after in (20, 40, 60):  # more CSRs accepted by each server before its SIGKILL
            submitter = Submitter(server, agent, bodies)
            submitter.start()
            _wait_for(submitter, kill_after)
            _kill(server)
            submitter.join(timeout=60)
            now_stored = _consistent(query, run)
            assert now_stored >= stored + submitter.accepted(), (now_stored, stored, submitter.statuses)
            stored = now_stored
            server.start()
        assert 0 < stored < CERTS  # the kills landed while CSRs were still coming in

        submitter = Submitter(server, agent, bodies)  # every CSR again: the stored ones get a 409
        submitter.run()
        assert submitter.statuses == {202: CERTS - stored, 409: stored}, submitter.statuses
        assert _consistent(query, run) == CERTS
        assert server.stop() == 0
    finally:
        _kill(server)
