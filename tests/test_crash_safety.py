"""Crash safety of issuance: a real `certctl server` is SIGKILLed while it issues, several times, and restarted.

Many renewals are queued (server key generation with RSA-3072 keys, so each issuance takes long enough for a
kill to land inside one), the job lease is 2 s and the processor ticks every 0.2 s. The server is killed after
N `certificate_issued` audit rows have appeared (N growing), and once right after a restart; the last start
(two workers on PostgreSQL) runs until the queue is empty. Then the database must show: every job Completed
(or Failed with a reason), none left Pending or Running, at most one version per job and none without its job
Completed, every certificate Active with its newest version, and the leases of killed servers reaped.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.test_server_process import Server, _env

pytestmark = pytest.mark.slow

ADMIN = "crash-test-admin-key-0123456789"
CERTS = 48


def _psql(url: str) -> Callable[[str], list[tuple[str, ...]]]:
    def query(sql: str) -> list[tuple[str, ...]]:
        out = subprocess.run(["psql", url, "-At", "-F", "\t", "-c", sql], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        return [tuple(line.split("\t")) for line in out.splitlines() if line]
    return query


def _sqlite(path: Path) -> Callable[[str], list[tuple[str, ...]]]:
    def query(sql: str) -> list[tuple[str, ...]]:
        with sqlite3.connect(path, timeout=30) as conn:
            return [tuple("" if v is None else str(v) for v in row) for row in conn.execute(sql).fetchall()]
    return query


def _count(query: Callable[[str], list[tuple[str, ...]]], sql: str) -> int:
    return int(query(sql)[0][0])


class Api:
    """JSON calls through curl against the running server."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, data = self.server.status_and_json(
            path, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", orjson.dumps(body).decode(),
            key=ADMIN,
        )
        assert status in (200, 201, 202), (path, status, data)
        return data


def _queue_renewals(server: Server) -> list[str]:
    api = Api(server)
    team = api.post("/api/v1/teams", {"name": "crash-team"})
    owner = api.post("/api/v1/owners", {"name": "crash-owner", "email": "crash@example.com", "team_id": team["id"]})
    policy = api.post("/api/v1/renewal-policies", {"name": "crash-policy", "renewal_window_days": 30,
                                                   "max_retries": 10, "retry_interval_seconds": 60})
    profile = api.post("/api/v1/profiles", {
        "name": "crash-rsa", "allowed_key_algorithms": [{"algorithm": "RSA", "min_size": 3072}],
        "allowed_ekus": ["serverAuth"],
    })
    ids = []
    for i in range(CERTS):
        made = api.post("/api/v1/certificates", {
            "name": f"crash-{i}", "common_name": f"crash-{i}.example.com", "owner_id": owner["id"],
            "team_id": team["id"], "issuer_id": "iss-local", "renewal_policy_id": policy["id"],
            "certificate_profile_id": profile["id"],
        })
        ids.append(made["id"])
    result = api.post("/api/v1/certificates/bulk-renew", {"team_id": team["id"]})
    assert result["total_enqueued"] == CERTS, result
    return ids


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _after_kill(query: Callable[[str], list[tuple[str, ...]]]) -> int:
    """Right after a SIGKILL: nothing half-written (no version without its job Completed, none twice).
    Returns how many jobs the dead server left Running."""
    assert _count(query, "SELECT count(*) FROM certificate_versions v JOIN jobs j ON j.id = v.job_id "
                         "WHERE j.status <> 'Completed'") == 0
    assert _count(query, "SELECT count(*) FROM (SELECT job_id FROM certificate_versions GROUP BY job_id "
                         "HAVING count(*) > 1) twice") == 0
    assert _count(query, "SELECT count(*) FROM jobs WHERE status = 'Completed' AND type IN ('Issuance', 'Renewal') "
                         "AND id NOT IN (SELECT job_id FROM certificate_versions WHERE job_id IS NOT NULL)") == 0
    return _count(query, "SELECT count(*) FROM jobs WHERE status = 'Running'")


def _run_scenario(server: Server, query: Callable[[str], list[tuple[str, ...]]], *, last_args: list[str]) -> None:
    issued = "SELECT count(*) FROM audit_events WHERE action = 'certificate_issued'"
    open_jobs = "SELECT count(*) FROM jobs WHERE status IN ('Pending', 'Running', 'AwaitingCSR', 'AwaitingApproval')"
    server.start()
    cert_ids = _queue_renewals(server)
    kills = []
    for threshold in (6, 18, 30):  # kill points: after N certificates were issued
        _wait(lambda n=threshold: _count(query, issued) >= n, f"{threshold} issued")
        server.kill()
        kills.append((threshold, _after_kill(query)))
        server.start()
    # Killed again right after a restart: the reaper and the processor are in their first runs.
    time.sleep(0.3)
    server.kill()
    kills.append((-1, _after_kill(query)))

    server.args = last_args
    server.start()
    _wait(lambda: _count(query, open_jobs) == 0, "every job to finish", timeout=180)
    assert server.stop() == 0

    # At least one kill landed while jobs were Running (claimed, mid-issuance), and those were reaped.
    assert any(running > 0 for _, running in kills), kills
    assert _count(query, "SELECT count(*) FROM audit_events WHERE action = 'job_lease_expired'") >= 1

    jobs = query("SELECT id, status, COALESCE(last_error, ''), attempts, max_attempts FROM jobs "
                 "WHERE type IN ('Issuance', 'Renewal') ORDER BY id")
    assert len(jobs) == CERTS
    for job_id, status, error, attempts, max_attempts in jobs:
        assert status in ("Completed", "Failed"), (job_id, status)
        assert status == "Completed" or error, (job_id, "a failed job says why")
        assert int(attempts) <= int(max_attempts), job_id
    completed = {job_id for job_id, status, *_ in jobs if status == "Completed"}
    assert len(completed) == CERTS, [j for j in jobs if j[1] != "Completed"]

    # Never executed twice to completion: one version per job, each with its job Completed.
    per_job = query("SELECT job_id, count(*) FROM certificate_versions GROUP BY job_id")
    assert all(int(n) == 1 for _, n in per_job), per_job
    assert {job_id for job_id, _ in per_job} == completed
    assert _count(query, "SELECT count(*) FROM certificate_versions WHERE job_id IS NULL") == 0
    assert _count(query, "SELECT count(*) FROM certificate_versions v JOIN jobs j ON j.id = v.job_id "
                         "WHERE j.status <> 'Completed'") == 0
    assert _count(query, issued) == CERTS  # one issuance event per stored version, none for dropped work
    # Every server-generated key was stored with its version and nothing else.
    assert _count(query, "SELECT count(*) FROM certificate_private_keys") == CERTS

    certs = query("SELECT id, status FROM managed_certificates WHERE name LIKE 'crash-%'")
    assert sorted(c for c, _ in certs) == sorted(cert_ids)
    assert {status for _, status in certs} == {"Active"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    import uuid

    from tests.conftest import _pg_admin, _pg_url, _run

    name = f"certctl_crash_{uuid.uuid4().hex[:10]}"
    _run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_url(name)
    finally:
        _run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _server_env(**extra: str) -> dict[str, str]:
    return _env(
        CERTCTL_API_KEYS_NAMED=f"admin:{ADMIN}:admin", CERTCTL_RATE_LIMIT_ENABLED="false",
        CERTCTL_KEYGEN_MODE="server", CERTCTL_JOB_LEASE_SECONDS="2", CERTCTL_RENEWAL_CONCURRENCY="4",
        CERTCTL_SCHEDULER_JOB_PROCESSOR_INTERVAL="0.2s", CERTCTL_SCHEDULER_LEASE_REAPER_INTERVAL="0.5s",
        CERTCTL_SCHEDULER_LEADER_LEASE_SECONDS="3", CERTCTL_LOG_LEVEL="info", **extra,
    )


def _leaders(server: Server, start: int) -> dict[str, set[str]]:
    """Which holder took each loop's lease, from the JSON log of one start."""
    taken: dict[str, set[str]] = {}
    for line in server.err(start).read_text().splitlines():
        if '"scheduler lease taken"' in line:
            entry = orjson.loads(line)
            taken.setdefault(entry["loop"], set()).add(entry["holder"])
    return taken


def test_sigkill_during_issuance_postgresql(tmp_path: Path, pg_url: str) -> None:
    server = Server(tmp_path / "data", _server_env(CERTCTL_DATABASE_URL=pg_url))
    try:
        _run_scenario(server, _psql(pg_url), last_args=["--workers", "2"])
    finally:
        server.kill()
    # The last start ran two workers: both started a scheduler, and each loop was led by exactly one of them.
    last = server.starts
    err = server.err(last).read_text()
    assert err.count('"msg":"scheduler started"') == 2
    leaders = _leaders(server, last)
    assert {"lease_reaper", "renewal_scan", "job_timeouts", "agent_health"} <= set(leaders)
    assert all(len(holders) == 1 for holders in leaders.values()), leaders


def test_sigkill_during_issuance_sqlite(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", _server_env())
    try:
        _run_scenario(server, _sqlite(tmp_path / "data" / "certctl.db"), last_args=[])
    finally:
        server.kill()
